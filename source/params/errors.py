"""One error type for bad task input, and the conversion from pydantic's errors to it.

Every message has the form `<field path>: expected <what>, got <value>`, e.g.
`orchestrator_details.segment_frames_expanded[1]: expected an integer, got "sixty"`, so the person who sent the
payload can find the field without reading a traceback. A bad payload fails the task at once and is never retried.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from source.params.redact import REDACTED, is_secret_key, redact

ModelT = TypeVar("ModelT", bound=BaseModel)

_NOTHING = object()
_MAX_SHOWN = 80


class PayloadError(ValueError):
    """A task payload that cannot be used. `.path` names the field (dotted, with [i] for list items)."""

    def __init__(self, path: str, expected: str, got: Any = _NOTHING, *, detail: str | None = None) -> None:
        self.path = path or "params"
        self.expected = expected
        shown = "nothing" if got is _NOTHING else show_value(got, secret=is_secret_path(self.path))
        message = f"{self.path}: expected {expected}, got {shown}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)

    @classmethod
    def at(cls, path: str, message: str) -> PayloadError:
        """A PayloadError whose message after `path: ` is given whole (it already says what was expected)."""
        error = cls.__new__(cls)
        error.path = path or "params"
        error.expected = message
        ValueError.__init__(error, f"{error.path}: {message}")
        return error


class Expected(ValueError):
    """Raised inside validators: `expected` is the text after "expected" in the final PayloadError message."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def join_path(root: str, *parts: str | int) -> str:
    """`join_path("phase_config", "phases", 0, "loras")` -> `phase_config.phases[0].loras`."""
    path = root
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path


def show_value(value: Any, *, secret: bool = False) -> str:
    """The offending value as JSON (so strings show in double quotes), shortened; secrets are never shown."""
    if secret:
        return f'"{REDACTED}"'
    if isinstance(value, str) and len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN]  # never serialise a 10 MB string only to cut it
    try:
        text = json.dumps(redact(value), ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(value).__name__)
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate must not break the writer
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def is_secret_path(path: str) -> bool:
    last = path.rsplit(".", 1)[-1].split("[", 1)[0]
    return is_secret_key(last)


def parse_model(model_cls: type[ModelT], data: Any, root: str = "") -> ModelT:
    """Validate `data` into `model_cls`; the first problem becomes a PayloadError whose path starts at `root`."""
    if not isinstance(data, Mapping):
        raise PayloadError(root or "params", "an object", data)
    try:
        return model_cls.model_validate(data)
    except ValidationError as error:
        raise payload_error_from(error, root) from None


def payload_error_from(error: ValidationError, root: str = "") -> PayloadError:
    """The first error of a pydantic ValidationError as a PayloadError (the rest are summarised as a count)."""
    problems = error.errors(include_url=False)
    first = problems[0]
    path = join_path(root, *_field_parts(first["loc"]))
    detail = f"and {len(problems) - 1} more problem(s)" if len(problems) > 1 else None
    given = first.get("input", _NOTHING)
    if first["type"] == "missing":
        return PayloadError(path, "a value (required field)", detail=detail)
    if first["type"] == "extra_forbidden":
        suffix = f" ({detail})" if detail else ""
        return PayloadError.at(path, f"unknown field: this payload does not take it{suffix}")
    return PayloadError(path, _expected_text(first), given, detail=detail)


def _field_parts(loc: Sequence[str | int]) -> list[str | int]:
    # pydantic puts validator/union tags such as "function-after[...]" or "int" into locations; they are not fields.
    return [part for part in loc if isinstance(part, int) or not _is_tag(part)]


def _is_tag(part: str) -> bool:
    return "[" in part or part in {"int", "float", "str", "bool", "list", "dict", "none", "tuple"}


_EXPECTED_BY_TYPE = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "enum": "one of the listed values",
    "datetime_type": "a date-time",
    "datetime_parsing": "an ISO 8601 date-time",
    "datetime_from_date_parsing": "an ISO 8601 date-time",
    "string_too_short": "a non-empty string",
    "extra_forbidden": "no such field",
}


def _expected_text(problem: Mapping[str, Any]) -> str:
    kind = problem["type"]
    context = problem.get("ctx") or {}
    cause = context.get("error")
    if isinstance(cause, Expected):
        return cause.expected
    if kind in _EXPECTED_BY_TYPE:
        return _EXPECTED_BY_TYPE[kind]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(v for k, v in context.items() if k in ("gt", "ge", "lt", "le")))
        return f"a number {sign} {bound}"
    if kind == "literal_error":
        return f"one of {context.get('expected')}"
    if kind == "too_short":
        return f"at least {context.get('min_length')} item(s)"
    if kind == "too_long":
        return f"at most {context.get('max_length')} item(s)"
    return str(problem["msg"]).removeprefix("Value error, ").removeprefix("value error, ")
