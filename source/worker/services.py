"""The heavy services a generation worker needs, created lazily on the first task that asks for them: the engine
(which imports torch and owns the loaded model) and the output storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from source.storage import storage_from_settings
from source.tasks.context import WorkerServices
from source.worker.settings import WorkerSettings
from Wan2GP.catalog import load_catalog

if TYPE_CHECKING:
    from Wan2GP.context_parallel import RankGroup


def build_services(settings: WorkerSettings, rank_group: RankGroup | None = None) -> WorkerServices:
    """CatalogError when a model definition file (bundled or in --defaults-dir) is invalid. With `rank_group` (one
    rank of `--context-parallel`), the engine is that rank's: rank 0's broadcasts each generation to the others."""
    catalog = load_catalog(extra_dirs=settings.defaults_dirs)

    def make_engine():
        from Wan2GP.engine import WanEngine  # torch is imported here, not at worker start-up
        from Wan2GP.placement import parse_budget_gb

        _library_logs_into_the_worker_log()

        engine = WanEngine(
            device=settings.device,
            cache_dir=settings.model_cache_dir,
            lora_dir=settings.lora_dir,
            prompt_model=settings.prompt_model,
            catalog=catalog,
            vram_budget=parse_budget_gb(settings.vram_budget_gb),
            rank_group=rank_group,
            compile_backend="inductor" if settings.compile or settings.fast else None,
            transformer_weights="fp8_dynamic" if settings.fast else None,
            vae_dtype=settings.vae_dtype,
            attention=settings.attention,
        )
        if rank_group is not None and rank_group.is_leader:
            from Wan2GP.context_parallel import ContextParallelLeader

            return ContextParallelLeader(engine, rank_group)
        return engine

    def make_storage():
        if settings.uses_reigh_edge:  # outputs stay local; the queue uploads them through Reigh's signed URLs
            return storage_from_settings(settings.output_dir, None, None, None)
        return storage_from_settings(
            settings.output_dir, settings.supabase_url, settings.supabase_key, settings.supabase_bucket
        )

    return WorkerServices(engine_factory=make_engine, storage_factory=make_storage, catalog=catalog)


def _library_logs_into_the_worker_log() -> None:
    """transformers and diffusers print through stderr handlers of their own; their records go up to the root logger
    instead, which the worker routes into its log format (source/worker/logs.py)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_default_handler()
        library.enable_propagation()
