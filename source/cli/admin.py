"""Queue administration: `python -m source.cli enqueue|list|show|retry|cancel|stats|workers|migrate ...`.

Tables (rich) for people, `--json` for scripts. `enqueue` prints the new task's id on the last line of stdout. Every
command takes `--db URL` (default: $HW_DB_URL, else $DATABASE_URL, else sqlite:///tasks.db, like the worker) and
migrates the schema first, so a fresh database just works. Params are shown with secrets redacted. Exit codes:
0 done, 1 the command failed (unknown id, wrong state, bad file, database unreachable), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from source.cli.catalog_args import catalog_from, catalog_options
from source.params.redact import redact
from source.queue import (
    QueueError,
    TaskQueue,
    TaskRecord,
    TaskStatus,
    open_queue,
    resolve_db_url,
)
from source.queue.present import progress_text, status_text, task_json

ROW_KEYS = frozenset(
    {"task_type", "params", "id", "task_id", "dependant_on", "depends_on", "project_id", "priority", "max_attempts"}
)
MAX_TREE_DEPTH = 6


class CommandError(Exception):
    """A failure to report on stderr with exit code 1 (no traceback)."""

    exit_code = 1


class PayloadRefused(CommandError):
    """`enqueue` refused what the worker would refuse: exit code 2, as a usage error."""

    exit_code = 2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///path or postgresql://... (default: $HW_DB_URL, $DATABASE_URL, else sqlite:///tasks.db)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="machine-readable output")

    enqueue = subparsers.add_parser(
        "enqueue",
        parents=[database, catalog_options()],
        help="add a task from a JSON file",
        description="Add a task. FILE holds the params object, or a row-like object {task_type, params, "
        "dependant_on?, depends_on?, project_id?, priority?, max_attempts?}. Prints the new id on the last line.",
    )
    enqueue.add_argument("file", metavar="FILE.json", help="the JSON file ('-' reads stdin)")
    enqueue.add_argument("--type", dest="task_type", metavar="T", help="task type (overrides the file's)")
    enqueue.add_argument("--depends-on", action="append", default=[], metavar="ID", help="wait for this task (repeat)")
    enqueue.add_argument("--project", dest="project_id", metavar="P")
    enqueue.add_argument("--priority", type=int, metavar="N", help="higher runs first (default 0)")
    enqueue.add_argument("--max-attempts", type=int, metavar="N", help="attempt cap (default 3)")
    enqueue.add_argument("--id", dest="task_id", metavar="ID", help="use this id instead of a new uuid")
    enqueue.add_argument(
        "--no-validate",
        action="store_true",
        help="insert even what the worker would refuse (an unknown task type or model, a bad payload)",
    )
    enqueue.set_defaults(func=_command(_enqueue, creates=True))

    listing = subparsers.add_parser("list", parents=[database, as_json], help="list tasks, newest first")
    listing.add_argument(
        "--status", metavar="S", help="Queued, 'In Progress' (or in_progress), Complete, Failed, Cancelled"
    )
    listing.add_argument("--type", dest="task_type", metavar="T")
    listing.add_argument("--limit", type=int, default=200, metavar="N")
    listing.set_defaults(func=_command(_list))

    show = subparsers.add_parser(
        "show", parents=[database, as_json], help="one task: fields, params, progress, children"
    )
    show.add_argument("task_id", metavar="ID")
    show.set_defaults(func=_command(_show))

    retry = subparsers.add_parser(
        "retry", parents=[database], help="put a Failed/Cancelled task (and what failed with it) back to Queued"
    )
    retry.add_argument("task_id", metavar="ID")
    retry.set_defaults(func=_command(_retry))

    cancel = subparsers.add_parser("cancel", parents=[database], help="cancel a task and everything that depends on it")
    cancel.add_argument("task_id", metavar="ID")
    cancel.add_argument("--reason", default="cancelled by admin")
    cancel.set_defaults(func=_command(_cancel))

    stats = subparsers.add_parser("stats", parents=[database, as_json], help="counts by status and type")
    stats.set_defaults(func=_command(_stats))

    workers = subparsers.add_parser("workers", parents=[database, as_json], help="the workers and their heartbeats")
    workers.set_defaults(func=_command(_workers))

    migrate = subparsers.add_parser("migrate", parents=[database], help="create or upgrade the schema")
    migrate.set_defaults(func=_command(_migrate, creates=True))


# ---------------------------------------------------------------------------------------------------- plumbing


def _command(
    body: Callable[[argparse.Namespace, TaskQueue], int | None], *, creates: bool = False
) -> Callable[[argparse.Namespace], int]:
    """`creates`: the command may make a new SQLite queue (enqueue, migrate); the others need an existing one."""

    def run(args: argparse.Namespace) -> int:
        try:
            with opened_queue(args.db, create=creates) as queue:
                return int(body(args, queue) or 0)
        except (CommandError, QueueError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code if isinstance(error, CommandError) else 1

    return run


@contextmanager
def opened_queue(url: str | None, *, create: bool, pool_size: int = 1) -> Iterator[TaskQueue]:
    """The queue a command works on. Only the commands that create (enqueue, migrate) create or upgrade the schema;
    the others read what is there, and say what to run when it is missing or older than this code (a read never
    alters anyone's database). CommandError for that; QueueError or ValueError when the URL cannot be opened."""
    queue = open_queue(resolve_db_url(url), pool_size=pool_size, create=create)
    try:
        if create:
            queue.migrate()
        else:
            version = queue.schema_version()
            if version < queue.latest_version:
                state = "has no queue schema" if version == 0 else f"has queue schema version {version}"
                raise CommandError(
                    f"{queue.redacted_url} {state}; this code needs version {queue.latest_version}: run "
                    f"`python -m source.cli migrate --db URL` (or start a worker on it) first"
                )
        yield queue
    finally:
        queue.close()


def _check_payload(task_type: str, params: Any, args: argparse.Namespace) -> None:
    """What this worker's handler for `task_type` checks first (payload model, model name), before any queue sees
    the row: the task type must be one the worker handles."""
    from source.tasks import default_registry  # the handlers' modules; none of them imports torch
    from source.tasks.context import TaskInputError
    from source.tasks.registry import UnknownTaskType

    try:
        default_registry(catalog_from(args)).check(task_type, params)
    except UnknownTaskType as error:
        raise PayloadRefused(f"{error} (--no-validate inserts it anyway)") from None
    except TaskInputError as error:
        raise PayloadRefused(f"{task_type}: {error} (--no-validate inserts it anyway)") from None


def _console() -> Console:
    # piped output (logs, CI) gets a wide fixed width instead of rich's 80 columns
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# ---------------------------------------------------------------------------------------------------- commands


def _read_json_file(file: str) -> Any:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as error:
        raise CommandError(f"{file}: cannot read: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(f"{file}: not valid JSON: {error}") from None


def _enqueue(args: argparse.Namespace, queue: TaskQueue) -> None:
    data = _read_json_file(args.file)
    if not isinstance(data, dict):
        raise CommandError(
            f"{args.file}: expected a JSON object (params, or {{task_type, params, ...}}); got {type(data).__name__}"
        )
    # A row (exported from a tasks table, or a reproducer file) may carry other columns or a description; a params
    # object never holds both a "params" object and a "task_type" string at its top level.
    row_like = isinstance(data.get("params"), dict) and (
        set(data) <= ROW_KEYS or isinstance(data.get("task_type"), str)
    )
    if row_like:
        params = data["params"]
        file_type = data.get("task_type")
        depends_on = data.get("depends_on") or []
        if isinstance(depends_on, str):
            depends_on = [depends_on]
        if not isinstance(depends_on, list) or not all(isinstance(item, str) for item in depends_on):
            raise CommandError(f"{args.file}: depends_on: expected a list of task ids")
        dependant_on = data.get("dependant_on")
        project_id = data.get("project_id")
        priority = data.get("priority")
        max_attempts = data.get("max_attempts")
        task_id = data.get("id") or data.get("task_id")
    else:
        params = dict(data)
        file_type = params.pop("task_type", None)  # upstream payloads carry their type inside the params
        depends_on, dependant_on, project_id, priority, max_attempts, task_id = [], None, None, None, None, None
    task_type = args.task_type or file_type
    if not task_type:
        raise CommandError(f'{args.file}: no task type: pass --type T, or put "task_type" in the file')
    if not args.no_validate:
        _check_payload(str(task_type), params, args)
    new_id = queue.enqueue(
        task_type,
        params,
        task_id=args.task_id or task_id,
        dependant_on=dependant_on,
        depends_on=[*depends_on, *args.depends_on],
        project_id=args.project_id or project_id,
        priority=args.priority if args.priority is not None else int(priority or 0),
        max_attempts=args.max_attempts if args.max_attempts is not None else int(max_attempts or 3),
    )
    print(new_id)


def _list(args: argparse.Namespace, queue: TaskQueue) -> None:
    status = TaskStatus.parse(args.status) if args.status else None
    tasks = queue.list_tasks(status=status, task_type=args.task_type, limit=args.limit)
    if args.json:
        _print_json([task_json(task) for task in tasks])
        return
    table = Table(title=f"{len(tasks)} task(s)", show_lines=False)
    # One line per task whatever the terminal's width: cells are cut with an ellipsis (`show ID` has the rest); the
    # id keeps at least the 8 characters `show`, `cancel` and `retry` accept as a prefix, and a long error cannot
    # squeeze the other columns away.
    widths = {"id": (8, None), "type": (11, None), "status": (11, None), "output / error": (None, 80)}
    for column in ("id", "type", "status", "waits for", "attempts", "created", "output / error"):
        low, high = widths.get(column, (None, None))
        table.add_column(column, no_wrap=True, overflow="ellipsis", min_width=low, max_width=high)
    for task in tasks:
        table.add_row(
            task.id,
            task.task_type + (f" ({_child_label(task)})" if task.role else ""),
            status_text(task),
            ", ".join(_short(dep) for dep in task.depends_on or ((task.dependant_on,) if task.dependant_on else ())),
            f"{task.attempts}/{task.max_attempts}",
            task.created_at.strftime("%Y-%m-%d %H:%M:%S") if task.created_at else "",
            _one_line(
                f"row cannot be read: {task.decode_error}"
                if task.decode_error
                else task.error_message
                if task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
                else task.output_location or ""
            ),
        )
    _console().print(table)


def _show(args: argparse.Namespace, queue: TaskQueue) -> None:
    task = queue.get(queue.resolve_id(args.task_id))
    if args.json:
        _print_json(_with_children(queue, task, depth=0))
        return
    console = _console()
    fields = Table(show_header=False, title=f"task {task.id}")
    fields.add_column("field", style="bold")
    fields.add_column("value", overflow="fold")
    for name, value in task_json(task).items():
        if name in ("params", "result", "progress"):
            continue
        if name == "status":
            fields.add_row(name, status_text(task))
        elif value not in (None, [], "") or name == "output_location":
            fields.add_row(name, str(value))
    fields.add_row("progress", progress_text(task))
    console.print(fields)
    console.print("params (secrets redacted):")
    console.print_json(json.dumps(redact(task.params), default=str))
    if task.result:
        console.print("result:")
        console.print_json(json.dumps(redact(task.result), default=str))
    children = queue.children(task.id)
    if children:
        tree = Tree(f"{task.task_type} {task.id} [{status_text(task)}]")
        _add_children(queue, tree, children, depth=1)
        console.print(tree)


def _with_children(queue: TaskQueue, task: TaskRecord, depth: int) -> dict[str, Any]:
    row = task_json(task)
    children = queue.children(task.id) if depth < MAX_TREE_DEPTH else []
    row["children"] = [_with_children(queue, child, depth + 1) for child in children]
    return row


def _add_children(queue: TaskQueue, tree: Tree, children: list[TaskRecord], depth: int) -> None:
    for child in children:
        detail = (
            child.error_message if child.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else child.output_location
        )
        branch = tree.add(
            f"{_child_label(child)}: {child.task_type} {child.id} [{status_text(child)}]"
            + (f" {progress_text(child)}" if child.status is TaskStatus.IN_PROGRESS else "")
            + (f" -> {detail}" if detail else "")
        )
        if depth < MAX_TREE_DEPTH:
            grandchildren = queue.children(child.id)
            if grandchildren:
                _add_children(queue, branch, grandchildren, depth + 1)


def _retry(args: argparse.Namespace, queue: TaskQueue) -> None:
    task_id = queue.resolve_id(args.task_id)
    for reset_id in queue.retry(task_id) or [task_id]:
        print(reset_id)


def _cancel(args: argparse.Namespace, queue: TaskQueue) -> None:
    task_id = queue.resolve_id(args.task_id)
    touched = queue.cancel(task_id, args.reason)
    if not touched:
        print(f"task {task_id} was already cancelled", file=sys.stderr)
    for touched_id in touched:
        print(touched_id)


def _stats(args: argparse.Namespace, queue: TaskQueue) -> None:
    stats = queue.stats()
    if args.json:
        _print_json(stats)
        return
    table = Table(title=f"{stats['total']} task(s), {stats['ready']} ready to run")
    statuses = [status.value for status in TaskStatus]
    table.add_column("type")
    for status in statuses:
        table.add_column(status, justify="right")
    for task_type, counts in sorted(stats["by_type"].items()):
        table.add_row(task_type, *(str(counts.get(status, 0)) for status in statuses))
    table.add_row("all", *(str(stats["by_status"].get(status, 0)) for status in statuses), style="bold")
    console = _console()
    console.print(table)
    if stats["oldest_queued_at"]:
        console.print(f"oldest queued task: {stats['oldest_queued_at']}")
    if stats["workers"]:
        console.print(
            "workers: " + ", ".join(f"{count} {status}" for status, count in sorted(stats["workers"].items()))
        )


def _workers(args: argparse.Namespace, queue: TaskQueue) -> None:
    workers = queue.list_workers()
    if args.json:
        _print_json([worker.to_dict() for worker in workers])
        return
    table = Table(title=f"{len(workers)} worker(s)")
    for column in ("id", "status", "last heartbeat", "current task", "started"):
        table.add_column(column, overflow="fold")
    for worker in workers:
        table.add_row(
            worker.id,
            worker.status,
            worker.last_heartbeat.strftime("%Y-%m-%d %H:%M:%S") if worker.last_heartbeat else "",
            worker.current_task_id or "",
            worker.started_at.strftime("%Y-%m-%d %H:%M:%S") if worker.started_at else "",
        )
    _console().print(table)


def _migrate(args: argparse.Namespace, queue: TaskQueue) -> None:
    print(f"schema version {queue.migrate()}")


# ---------------------------------------------------------------------------------------------------- formatting


def _one_line(text: str | None, limit: int = 160) -> str:
    """A table cell: the first line, cut (`show ID` prints the whole message)."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _short(task_id: str) -> str:
    return task_id[:8]


def _child_label(task: TaskRecord) -> str:
    return f"{task.role}" if task.segment_index is None else f"{task.role} {task.segment_index}"
