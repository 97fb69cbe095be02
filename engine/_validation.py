"""Request checks against `schemas/`: what the HTTP layer runs on every body before routing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema

from ._errors import RequestError
from ._fastcheck import compile_check
from ._yaml import load_schema

__all__ = ["MESSAGES_RANGES", "RequestValidator"]

#: Anthropic's own limits on `/v1/messages`, (low, high) with None for open; messages use its wording
#: (``temperature: range: 0..1``).
MESSAGES_RANGES: dict[str, tuple[float | None, float | None]] = {
    "max_tokens": (1, None), "temperature": (0, 1), "top_p": (0, 1), "top_k": (0, None),
}


class RequestValidator:
    """Checks request bodies against one schema: a compiled yes/no check first (`_fastcheck`: no
    exception on valid input), jsonschema's precise message only when a body fails it."""

    def __init__(self, schema_name: str, ranges: Mapping[str, tuple[float | None, float | None]] | None = None) -> None:
        schema = load_schema(schema_name)
        self._fast = compile_check(schema)
        self._precise = jsonschema.Draft202012Validator(schema)
        self._ranges = dict(ranges or {})

    def check(self, body: Any) -> None:
        """Raise `RequestError` naming the first problem (its JSON path and what is wrong)."""
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        if not self._fast(body):
            error = jsonschema.exceptions.best_match(self._precise.iter_errors(body))
            if error is None:  # the two validators disagree; trust the precise one
                return
            where = ".".join(str(part) for part in error.absolute_path) or "body"
            raise RequestError(f"{where}: {error.message}") from None
        for key, (low, high) in self._ranges.items():
            value = body.get(key)
            if value is not None and not _within(value, low, high):
                raise RequestError(f"{key}: range: {_show(low)}..{_show(high)}")


def _within(value: Any, low: float | None, high: float | None) -> bool:
    """The schema has checked the type; a bool is never a number here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return (low is None or value >= low) and (high is None or value <= high)


def _show(bound: float | None) -> str:
    return "" if bound is None else f"{bound:g}"
