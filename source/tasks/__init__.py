"""Task handlers: one module per task type, and the registry that maps `task_type` strings to them.

Handlers talk to the queue only through `TaskContext` / `TaskQueue` (never SQL). Importing this package is cheap:
handler modules load heavy libraries lazily.
"""

from source.tasks.builtin_handlers import default_registry
from source.tasks.context import (
    FatalWorkerError,
    ServiceNotConfigured,
    TaskCancelled,
    TaskContext,
    TaskInputError,
    TaskOutcome,
    TransientTaskError,
    WorkerServices,
    parse_params,
)
from source.tasks.registry import Handler, TaskRegistry, UnknownTaskType

__all__ = [
    "FatalWorkerError",
    "Handler",
    "ServiceNotConfigured",
    "TaskCancelled",
    "TaskContext",
    "TaskInputError",
    "TaskOutcome",
    "TaskRegistry",
    "TransientTaskError",
    "UnknownTaskType",
    "WorkerServices",
    "default_registry",
    "parse_params",
]
