"""Which provider and model serve a request, and why.

Precedence (each step is tested in tests/test_router.py; docs/routing.md has the user's view):

1. ``routes.custom``: the user's ``module:function``, given the request and its token estimate and a
   time limit; it may answer None to let the rules below decide, and if it fails they decide;
2. an explicit ``provider/model`` or ``provider,model`` as the request's ``model`` (what users type
   in Claude Code's ``/model``), when ``provider`` is configured;
3. a subagent tag ``<CCPROXY-SUBAGENT-MODEL>provider/model</CCPROXY-SUBAGENT-MODEL>`` anywhere in the
   system prompt or the first user messages; the tag is removed before the request is forwarded;
4. ``routes.models``: the Anthropic model name, exact match first, then globs in file order;
5. ``long_context``: estimated input tokens above ``long_context_threshold``;
6. ``background``: a haiku-class model (the name contains ``haiku``);
7. ``think``: thinking enabled (``adaptive`` too when ``think_adaptive`` is on);
8. ``web_search``: a web search server tool; ``image``: an image anywhere, tool results included;
9. ``default``.

A category route that is not configured is skipped. A route is a list of targets: the first serves,
the rest are fallbacks the app tries in order while nothing has reached the client yet.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ._config import RouteTarget, Settings
from ._errors import RouteError
from ._types import TokenCount

logger = logging.getLogger("ccproxy_engine.router")

SUBAGENT_TAG = re.compile(r"<CCPROXY-SUBAGENT-MODEL>\s*([^<]*?)\s*</CCPROXY-SUBAGENT-MODEL>\s*", re.I)
#: How many user messages, from the first, are searched for a subagent tag.
TAGGED_USER_MESSAGES = 2



@dataclass(frozen=True, slots=True)
class Route:
    """The decision for one request: the targets in order, the reason shown in ``x-ccproxy-route``,
    the body to forward (the request's own, or a copy without the subagent tag) and the token
    estimate when routing needed one."""

    targets: tuple[RouteTarget, ...]
    reason: str
    body: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    tokens: int | None = None

    @property
    def primary(self) -> RouteTarget:
        return self.targets[0]

    def header(self, target: RouteTarget | None = None) -> str:
        """The ``x-ccproxy-route`` value; always a valid header value, whatever the model is called."""
        chosen = target or self.primary
        return header_safe(f"{chosen.provider}/{chosen.model}; reason={self.reason}")


def header_safe(text: str) -> str:
    """`text` as an HTTP header value: visible ASCII and spaces as they are, anything else (control
    characters, CR/LF, non-ASCII) percent-encoded as UTF-8."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe="".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%"))


class Router:
    """Routes requests by the config's ``routes:``; built once, shared by every request."""

    def __init__(self, settings: Settings) -> None:
        routes = self._routes = settings.routes
        self._providers = frozenset(settings.providers)
        self._exact: dict[str, tuple[RouteTarget, ...]] = {}
        self._globs: list[tuple[str, tuple[RouteTarget, ...]]] = []
        for pattern, targets in routes.models.items():
            if any(ch in pattern for ch in "*?["):
                self._globs.append((pattern, tuple(targets)))
            else:
                self._exact[pattern] = tuple(targets)
        self._custom = _load_custom(routes.custom.function) if routes.custom else None
        self._custom_timeout = routes.custom.timeout if routes.custom else 0.0

    @property
    def needs_tokens(self) -> bool:
        """Whether routing counts tokens (then the count is reused for ``message_start``)."""
        return bool(self._routes.long_context) or self._custom is not None

    async def route(self, body: dict[str, Any], count: TokenCount) -> Route:
        """Decide; `count` is awaited only when a route needs the token estimate."""
        tokens = await count() if self.needs_tokens else None
        route = await self._custom_route(body, tokens) or self._rule_route(body, tokens)
        logger.debug("route %s (%s tokens)", route.header(), tokens)
        return route

    async def _custom_route(self, body: dict[str, Any], tokens: int | None) -> Route | None:
        if self._custom is None:
            return None
        try:
            if inspect.iscoroutinefunction(self._custom):
                call = self._custom(body, tokens)
            else:  # a thread, so a slow sync function cannot hold the event loop past its limit
                call = asyncio.to_thread(self._custom, body, tokens)
            targets = self._targets(await asyncio.wait_for(call, self._custom_timeout))
        except Exception as exc:  # the user's code: any failure means "the rules decide"
            logger.warning("custom router failed, the built-in routes decide: %s: %s", type(exc).__name__, exc)
            return None
        return Route(targets, "custom", body, tokens) if targets else None

    def _targets(self, answer: Any) -> tuple[RouteTarget, ...]:
        texts = [answer] if isinstance(answer, str) else list(answer or ())
        targets = tuple(RouteTarget.parse(str(text)) for text in texts)
        unknown = [t.provider for t in targets if t.provider not in self._providers]
        if unknown:
            raise ValueError(f"unknown provider {unknown[0]!r}")
        return targets

    def _rule_route(self, body: dict[str, Any], tokens: int | None) -> Route:
        model = body.get("model")
        name = model if isinstance(model, str) else ""
        explicit = self._explicit(name)
        if explicit is not None:
            return Route((explicit,), "explicit", body, tokens)
        tagged = self._subagent(body)
        if tagged is not None:
            target, stripped = tagged
            return Route((target,), "subagent", stripped, tokens)
        if name in self._exact:
            return Route(self._exact[name], "model", body, tokens)
        for pattern, targets in self._globs:
            if fnmatch.fnmatchcase(name, pattern):
                return Route(targets, "model", body, tokens)
        category = self._category(body, name, tokens)
        if category is not None:
            return Route(tuple(category[1]), category[0], body, tokens)
        if not self._routes.default:
            raise RouteError(f"no route for model '{name}': set routes.default or routes.models in the config")
        return Route(tuple(self._routes.default), "default", body, tokens)

    def _category(self, body: Mapping[str, Any], name: str,
                  tokens: int | None) -> tuple[str, list[RouteTarget]] | None:
        """The first configured category route that applies to this request, in precedence order."""
        routes = self._routes
        if routes.long_context and tokens is not None and tokens > routes.long_context_threshold:
            return "long_context", routes.long_context
        if routes.background and "haiku" in name.lower():
            return "background", routes.background
        if routes.think and _thinks(body, routes.think_adaptive):
            return "think", routes.think
        if routes.web_search and _has_web_search(body):
            return "web_search", routes.web_search
        if routes.image and _has_image(body):
            return "image", routes.image
        return None

    def _explicit(self, name: str) -> RouteTarget | None:
        for separator in ("/", ","):
            provider, found, model = name.partition(separator)
            if found and model and provider in self._providers:
                return RouteTarget(provider, model)
        return None

    def _subagent(self, body: dict[str, Any]) -> tuple[RouteTarget, dict[str, Any]] | None:
        """The target named by a subagent tag, and the body without the tag (copied where it changed)."""
        system = body.get("system")
        found = _find_tag(system)
        if found is not None:
            target = self._tag_target(found[0])
            if target is not None:
                return target, {**body, "system": found[1]}
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        seen_users = 0
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            seen_users += 1
            if seen_users > TAGGED_USER_MESSAGES:
                break
            found = _find_tag(message.get("content"))
            if found is not None:
                target = self._tag_target(found[0])
                if target is not None:
                    changed = [*messages[:index], {**message, "content": found[1]}, *messages[index + 1:]]
                    return target, {**body, "messages": changed}
        return None

    def _tag_target(self, text: str) -> RouteTarget | None:
        target = self._explicit(text)
        if target is None:
            logger.warning("subagent tag names %r, which is not a configured provider/model", text)
        return target


def _find_tag(content: Any) -> tuple[str, Any] | None:
    """The tag's text and `content` without the tag, for a string or a list of text blocks."""
    if isinstance(content, str):
        match = SUBAGENT_TAG.search(content)
        return (match.group(1), SUBAGENT_TAG.sub("", content, count=1)) if match else None
    if not isinstance(content, list):
        return None
    for index, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            match = SUBAGENT_TAG.search(block["text"])
            if match:
                stripped = {**block, "text": SUBAGENT_TAG.sub("", block["text"], count=1)}
                return match.group(1), [*content[:index], stripped, *content[index + 1:]]
    return None


def _thinks(body: Mapping[str, Any], adaptive_counts: bool) -> bool:
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    return kind == "enabled" or (adaptive_counts and kind == "adaptive")


def _has_web_search(body: Mapping[str, Any]) -> bool:
    return any(isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search")
               for tool in body.get("tools") or ())


def _has_image(body: Mapping[str, Any]) -> bool:
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and _blocks_have_image(content):
            return True
    return False


def _blocks_have_image(blocks: list[Any]) -> bool:
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "image":
            return True
        inner = block.get("content")
        if block.get("type") == "tool_result" and isinstance(inner, list) and _blocks_have_image(inner):
            return True
    return False


def _load_custom(spec: str) -> Callable[[dict[str, Any], int | None], Any]:
    """Import ``module:function``; a config naming something that cannot be imported fails start-up."""
    module_name, _, attribute = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise RouteError(f"routes.custom.function {spec!r} cannot be imported: {exc}") from exc
    if not callable(function):
        raise RouteError(f"routes.custom.function {spec!r} is not callable")
    return function  # type: ignore[no-any-return]


__all__ = ["SUBAGENT_TAG", "Route", "Router"]
