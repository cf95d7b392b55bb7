"""A tiny loader for SQL files made of named statements (the procrastinate style).

    -- name: claim_next
    -- Takes the oldest ready task.
    UPDATE tasks SET ...;

Every statement starts with a `-- name: <identifier>` line; the comment lines right after it describe it; the body
runs until the next header. A comment line `-- application_name: <value>` among them makes the statement run with
that session `application_name` (and only that statement): Reigh's timing trigger lets only `claim_task` and
`complete_task` change a task's timing columns. One set of files per dialect lives in `source/queue/sql/<dialect>/`.
Queries come from `queries.sql`; migrations from `migration_NNNN_<title>.sql`, whose statements run in file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$")
_APPLICATION_NAME = re.compile(r"^--\s*application_name:\s*(?P<value>[a-z_]+)\s*$")
_MIGRATION_FILE = re.compile(r"^migration_(?P<version>\d{4})_(?P<title>[a-z0-9_]+)\.sql$")


class Statement(NamedTuple):
    name: str
    sql: str
    application_name: str | None = None  # run under this session application_name (Reigh's timing trigger)


@dataclass(frozen=True)
class Migration:
    version: int
    title: str
    statements: tuple[Statement, ...]  # in file order


def parse_named_statements(text: str, *, source: str) -> list[Statement]:
    """Splits a file into statements, in order. Text before the first header may only be comments."""
    statements: list[Statement] = []
    current_name: str | None = None
    body: list[str] = []

    def flush() -> None:
        if current_name is None:
            return
        sql = "\n".join(line for line in body if not line.lstrip().startswith("--")).strip().rstrip(";").strip()
        if not sql:
            raise ValueError(f"{source}: statement {current_name!r} is empty")
        directives = [match.group("value") for line in body if (match := _APPLICATION_NAME.match(line.strip()))]
        if len(directives) > 1:
            raise ValueError(f"{source}: statement {current_name!r} names application_name more than once")
        statements.append(Statement(current_name, sql, directives[0] if directives else None))

    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line.strip())
        if header:
            flush()
            current_name = header.group("name")
            if any(statement.name == current_name for statement in statements):
                raise ValueError(f"{source}:{number}: statement {current_name!r} is defined twice")
            body = []
        elif current_name is None:
            if line.strip() and not line.strip().startswith("--"):
                raise ValueError(f"{source}:{number}: SQL before the first '-- name:' header")
        else:
            body.append(line)
    flush()
    return statements


def load_queries(dialect: str) -> dict[str, Statement]:
    folder = resources.files("source.queue") / "sql" / dialect
    text = (folder / "queries.sql").read_text(encoding="utf-8")
    return {
        statement.name: statement for statement in parse_named_statements(text, source=f"sql/{dialect}/queries.sql")
    }


def load_migrations(dialect: str) -> list[Migration]:
    folder = resources.files("source.queue") / "sql" / dialect
    migrations: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if not match:
            continue
        statements = parse_named_statements(entry.read_text(encoding="utf-8"), source=f"sql/{dialect}/{entry.name}")
        migrations.append(Migration(int(match.group("version")), match.group("title"), tuple(statements)))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"sql/{dialect}: migration versions must be 1..N without gaps; found {versions}")
    return migrations
