"""Maps task_type strings to handlers. A registry is an ordinary object built at start-up; there is no global one."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from source.tasks.context import TaskContext, TaskOutcome

Handler = Callable[[TaskContext], TaskOutcome]

BUILTIN_HANDLERS_MODULE = "source.tasks.builtin_handlers"


class UnknownTaskType(KeyError):
    """No handler for this task_type; the message lists the ones this worker knows."""

    def __init__(self, task_type: str, known: list[str]) -> None:
        super().__init__(f"unknown task_type {task_type!r}; this worker handles: {', '.join(known) or 'nothing'}")
        self.task_type = task_type
        self.known = known

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TaskRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, task_type: str, handler: Handler, *, replace: bool = False) -> None:
        if not task_type or not isinstance(task_type, str):
            raise ValueError(f"task_type: expected a non-empty string; got {task_type!r}")
        if not callable(handler):
            raise TypeError(f"handler for {task_type!r}: expected a callable taking a TaskContext")
        if task_type in self._handlers and not replace:
            raise ValueError(f"task_type {task_type!r} already has a handler (pass replace=True to override it)")
        self._handlers[task_type] = handler

    def get(self, task_type: str) -> Handler:
        try:
            return self._handlers[task_type]
        except KeyError:
            raise UnknownTaskType(task_type, self.known_types()) from None

    def known_types(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)


def default_registry() -> TaskRegistry:
    """A new registry with the diagnostic task types, plus the product handlers when
    `source.tasks.builtin_handlers` exists (it defines `register_all(registry)`)."""
    from source.tasks import diagnostic

    registry = TaskRegistry()
    diagnostic.register(registry)
    if importlib.util.find_spec(BUILTIN_HANDLERS_MODULE) is not None:
        importlib.import_module(BUILTIN_HANDLERS_MODULE).register_all(registry)
    return registry
