"""A broken GPU stops the worker (the task goes back to the queue for a healthy one); running out of GPU memory is
retried. There is no GPU here, so the failures are injected: real torch exception types raised by an engine object
handed to the real worker loop in place of WanEngine."""

from __future__ import annotations

import pytest
import torch

from source.queue import TaskStatus
from source.tasks import default_registry
from source.tasks.context import FatalWorkerError, TransientTaskError, WorkerServices
from source.tasks.travel_support import classify_gpu_failure
from source.worker import EXIT_FATAL, run


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), TransientTaskError),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), FatalWorkerError),
        (RuntimeError("CUDA driver version is insufficient for CUDA runtime version"), FatalWorkerError),
        (RuntimeError("NVML_SUCCESS == r INTERNAL ASSERT FAILED"), FatalWorkerError),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x4)"), type(None)),
        (ValueError("cuda driver"), type(None)),  # only runtime errors come from the GPU stack
    ],
)
def test_classify_gpu_failure(error, expected):
    assert isinstance(classify_gpu_failure(error), expected)


class _BrokenGpuEngine:
    """Raises what torch raises once the CUDA context is gone."""

    def generate(self, *args, **kwargs):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")


def test_broken_gpu_gives_the_task_back_and_stops_the_worker(worker_env):
    task_id = worker_env.queue.enqueue("t2v", {"model": "wan_tiny_t2v", "prompt": "x"})
    base = worker_env.settings
    services = WorkerServices(engine_factory=_BrokenGpuEngine, storage_factory=None)
    exit_code = run(base, registry=default_registry(), services=services)
    assert exit_code == EXIT_FATAL
    task = worker_env.queue.get(task_id)
    assert task.status == TaskStatus.QUEUED  # for a worker on a healthy GPU
    assert task.attempts == 0
    assert task.worker_id is None
