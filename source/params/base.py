"""The base of every payload model: unknown keys kept, JSON null means "not given", instances immutable."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from source.params.errors import Expected


class PayloadModel(BaseModel):
    """Reigh adds fields over time, so unknown keys are kept (`model_extra`) while known keys are typed."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_not_given(cls, data: Any) -> Any:
        # Dropping nulls lets defaults apply and makes a required field sent as null read "required", not "null".
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def given(self) -> dict[str, Any]:
        """The fields present in the payload (known and unknown), as plain JSON-like values."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


def _not_bool(value: Any) -> Any:
    # JSON true/false silently becoming 1/0 hides mistakes in numeric fields.
    if isinstance(value, bool):
        raise Expected("a number, not true/false")
    return value


def _positive_int(value: int) -> int:
    if value < 1:
        raise Expected("an integer >= 1")
    return value


def _resolution(value: Any) -> Any:
    if not isinstance(value, str):
        raise Expected('a resolution "WIDTHxHEIGHT" such as "768x576"')
    parts = value.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise Expected('a resolution "WIDTHxHEIGHT" such as "768x576"')
    return f"{int(parts[0])}x{int(parts[1])}"


def _text_or_empty(value: Any) -> Any:
    return "" if value is None else value


Number = Annotated[float, BeforeValidator(_not_bool)]
Integer = Annotated[int, BeforeValidator(_not_bool)]
PositiveInt = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_positive_int)]
Resolution = Annotated[str, BeforeValidator(_resolution)]
TextOrEmpty = Annotated[str, BeforeValidator(_text_or_empty)]  # list entries where null means ""
