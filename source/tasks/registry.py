"""Maps task_type strings to handlers. A registry is an ordinary object built at start-up; there is no global one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from source.tasks.context import TaskContext, TaskOutcome

Handler = Callable[[TaskContext], TaskOutcome]


class UnknownTaskType(KeyError):
    """No handler for this task_type; the message lists the ones this worker knows."""

    def __init__(self, task_type: str, known: list[str]) -> None:
        super().__init__(f"unknown task_type {task_type!r}; this worker handles: {', '.join(known) or 'nothing'}")
        self.task_type = task_type
        self.known = known

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# What a handler checks of a payload before it does anything (the same function it calls first): raises
# TaskInputError naming the field. `cli enqueue` runs it so a bad payload is refused before it reaches a queue.
PayloadCheck = Callable[[Any], object]


class TaskRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._checks: dict[str, PayloadCheck] = {}

    def check(self, task_type: str, params: Any) -> None:
        """Refuses what the handler of `task_type` would refuse at once: UnknownTaskType, or TaskInputError naming
        the field (a type registered without a check accepts any JSON object)."""
        self.get(task_type)
        check = self._checks.get(task_type)
        if check is not None:
            check(params)

    def register(
        self, task_type: str, handler: Handler, *, check: PayloadCheck | None = None, replace: bool = False
    ) -> None:
        if not task_type or not isinstance(task_type, str):
            raise ValueError(f"task_type: expected a non-empty string; got {task_type!r}")
        if not callable(handler):
            raise TypeError(f"handler for {task_type!r}: expected a callable taking a TaskContext")
        if task_type in self._handlers and not replace:
            raise ValueError(f"task_type {task_type!r} already has a handler (pass replace=True to override it)")
        self._handlers[task_type] = handler
        if check is not None:
            self._checks[task_type] = check
        else:
            self._checks.pop(task_type, None)

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
