"""Which provider and model serve a request, and why.

Precedence (each step is tested in tests/test_router.py):

1. an explicit ``provider/model`` or ``provider,model`` in the request's ``model`` (what users type in
   Claude Code's ``/model``), when ``provider`` is a configured provider;
2. ``routes.models``: the request's Anthropic model name, exact match first, then globs in the order
   written;
3. ``routes.default``.

The router only decides; it never sends. A route is a list of targets: the first serves, the rest are
fallbacks (used by the fallback logic of a later issue; today the first target is used).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

from ._config import RouteTarget, Settings
from ._errors import RouteError


@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one request: the targets in order, and the reason shown in ``x-ccproxy-route``."""

    targets: tuple[RouteTarget, ...]
    reason: str

    @property
    def primary(self) -> RouteTarget:
        return self.targets[0]

    def header(self, target: RouteTarget | None = None) -> str:
        chosen = target or self.primary
        return f"{chosen.provider}/{chosen.model}; reason={self.reason}"


class Router:
    """Routes requests by the config's ``routes:``; built once, shared by every request."""

    def __init__(self, settings: Settings) -> None:
        routes = settings.routes
        self._providers = frozenset(settings.providers)
        self._default = tuple(routes.default)
        self._exact: dict[str, tuple[RouteTarget, ...]] = {}
        self._globs: list[tuple[str, tuple[RouteTarget, ...]]] = []
        for pattern, targets in routes.models.items():
            if any(ch in pattern for ch in "*?["):
                self._globs.append((pattern, tuple(targets)))
            else:
                self._exact[pattern] = tuple(targets)

    def route(self, body: Mapping[str, object]) -> Route:
        model = body.get("model")
        name = model if isinstance(model, str) else ""
        explicit = self._explicit(name)
        if explicit is not None:
            return Route((explicit,), "explicit")
        if name in self._exact:
            return Route(self._exact[name], "model")
        for pattern, targets in self._globs:
            if fnmatch.fnmatchcase(name, pattern):
                return Route(targets, "model")
        if not self._default:
            raise RouteError(
                f"no route for model '{name}': set routes.default or routes.models in the config"
            )
        return Route(self._default, "default")

    def _explicit(self, name: str) -> RouteTarget | None:
        for separator in ("/", ","):
            provider, found, model = name.partition(separator)
            if found and model and provider in self._providers:
                return RouteTarget(provider, model)
        return None
