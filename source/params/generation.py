"""The payload of a plain generation task (t2v, i2v, vace, generate_video ...)."""

from source.params.payloads import GenerationTaskParams

__all__ = ["GenerationTaskParams"]
