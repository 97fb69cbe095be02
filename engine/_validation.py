"""Request checks against `schemas/`: what the HTTP layer runs on every body before routing."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import jsonschema

from ._errors import RequestError
from ._loader import load_schema

__all__ = ["RequestValidator"]


class RequestValidator:
    """Checks request bodies against one schema: a fast compiled check first, a precise message on failure."""

    def __init__(self, schema_name: str) -> None:
        schema = load_schema(schema_name)
        self._fast = fastjsonschema.compile(schema)
        self._precise = jsonschema.Draft202012Validator(schema)

    def check(self, body: Any) -> None:
        """Raise `RequestError` naming the first problem (its JSON path and what is wrong)."""
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        try:
            self._fast(body)
        except fastjsonschema.JsonSchemaValueException:
            error = jsonschema.exceptions.best_match(self._precise.iter_errors(body))
            if error is None:  # the two validators disagree; trust the precise one
                return
            where = ".".join(str(part) for part in error.absolute_path) or "body"
            raise RequestError(f"{where}: {error.message}") from None
