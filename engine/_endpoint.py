"""Bound endpoints: one object per configured provider, built once at start-up.

Compiled rules (`CompiledRules`) are shared by every provider configured on them; an `Endpoint`
binds them to one provider: its name, its settings, and the values its templates see as
``provider`` (`provider_vars`). It has two verbs, and everything provider-specific a request needs goes through them:

* `Endpoint.prepare` turns an Anthropic body into an `UpstreamCall` (URL, headers, encoded body,
  and what the answer needs: the upstream model, the client's model, renamed tools);
* `Endpoint.message` and `Endpoint.events` turn the upstream's answer into an Anthropic message or a
  stream of Anthropic events; `Endpoint.error` maps a non-2xx answer.

`PassthroughEndpoint` serves rule sets marked ``passthrough: true`` (an upstream that speaks the
Anthropic Messages API): the client's bytes go up with only the model replaced, and for Anthropic
clients the answer's bytes come back unchanged (`is_passthrough`), while `message`/`events` still
decode it when the rules have selectors for it.

The HTTP app, the proxy pipeline, the rule-case runner (tests/rules) and the CLI's ``translate``
all drive this one object, so what a rule case checks is what a request gets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from jinja2 import Undefined

from ._compiler import CompiledRules, ResponseDecoder
from ._config import ProviderSettings, Settings
from ._errors import UpstreamStatusError
from ._functions import encode_signature, new_id
from ._stream import MessageBuilder, StreamMachine, emulated_stop_sequences, stop_scanner
from ._thinking import passthrough_body
from ._translate import StreamTranslator, replace_model, translate_message
from ._types import JSONObject
from ._upstream import UpstreamRequest

__all__ = ["Endpoint", "PassthroughEndpoint", "UpstreamCall", "bind_endpoints"]


@dataclass(slots=True)
class UpstreamCall:
    """One prepared call to a provider, and what translating its answer back needs."""

    request: UpstreamRequest
    model: str
    """The model the provider is asked for (the route's)."""
    client_model: str
    """The model the client asked for: answers name it."""
    tool_names: dict[str, str] = field(default_factory=dict)
    """Upstream tool name → the client's, for names the rules changed."""
    body: JSONObject | None = field(default=None, repr=False)
    """The built upstream body before encoding (None for a passthrough, which sends the client's bytes)."""
    stop_sequences: tuple[str, ...] = ()
    """The client's stop sequences when the rules emulate them: the answer is scanned for them."""

    @property
    def stream(self) -> bool:
        return self.request.stream


class Endpoint:
    """A configured provider bound to its compiled rules; safe to share between requests."""

    __slots__ = ("name", "provider_vars", "rules", "settings")

    is_passthrough = False

    def __init__(self, settings: ProviderSettings, rules: CompiledRules,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self.rules = rules
        self.provider_vars = _provider_vars(settings, rules, env)
        """What this provider's templates see as ``provider``: config values, else the rule's defaults."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} rules={self.rules.name}>"

    def prepare(self, body: JSONObject, *, model: str, client_headers: Mapping[str, str] | None = None,
                raw: bytes | None = None) -> UpstreamCall:
        """The upstream call for an Anthropic `body` sent to `model`. `raw` is the client's bytes while
        they still say exactly what `body` says (a passthrough forwards them)."""
        stream = bool(body.get("stream"))
        prepared = self.rules.build_request(body, model=model, provider_vars=self.provider_vars, stream=stream,
                                            client_headers=client_headers)
        request = UpstreamRequest(
            provider=self.name, method=self.rules.method, url=prepared.url, headers=prepared.headers,
            body=self._payload(prepared.body, body, raw, model), stream=stream, timeouts=self.settings.timeouts,
        )
        return UpstreamCall(request, model, str(body.get("model")), prepared.tool_names,
                            None if self.is_passthrough else prepared.body,
                            emulated_stop_sequences(body, self.rules.emulate_stop_sequences))

    def _payload(self, built: JSONObject, body: JSONObject, raw: bytes | None, model: str) -> bytes:
        return orjson.dumps(built, default=_undefined_as_null)

    def error(self, status: int, body: bytes, retry_after: str | None = None) -> UpstreamStatusError:
        """A non-2xx answer as the error an Anthropic client would have received."""
        return self.rules.errors.to_exception(status, body, retry_after, provider=self.name)

    def decoder(self, *, stream: bool) -> ResponseDecoder:
        """A decoder for one answer of this provider."""
        return ResponseDecoder(self.rules, stream=stream, provider=self.name)

    def signer(self, model: str) -> Callable[[str | None], str]:
        """Wraps a reasoning signature (or none) in the engine's honest envelope for this provider: the
        name templates see as ``provider.name``, so it opens (``decode_signature``) only here."""
        name = self.name
        return lambda signature: encode_signature(name, model, signature)

    def message(self, call: UpstreamCall, raw: bytes) -> JSONObject:
        """A whole upstream answer (JSON bytes) → the Anthropic message; raises `EngineError`s."""
        builder = MessageBuilder(provider=self.name, message_id=new_id("msg_"), model=call.client_model,
                                 tool_names=call.tool_names, sign=self.signer(call.model),
                                 stop=stop_scanner(call.stop_sequences))
        return translate_message(self.decoder(stream=False), raw, builder)

    def events(self, call: UpstreamCall, input_tokens: int) -> StreamTranslator:
        """A translator for one streamed answer: upstream bytes in, Anthropic events out."""
        machine = StreamMachine(provider=self.name, message_id=new_id("msg_"), model=call.client_model,
                                tool_names=call.tool_names, sign=self.signer(call.model),
                                input_tokens=input_tokens, stop=stop_scanner(call.stop_sequences))
        return StreamTranslator(self.decoder(stream=True), machine)


class PassthroughEndpoint(Endpoint):
    """An upstream that speaks the Anthropic Messages API: the client's bytes go up with only the model
    replaced, and its answer can go back byte for byte."""

    __slots__ = ()

    is_passthrough = True

    def _payload(self, built: JSONObject, body: JSONObject, raw: bytes | None, model: str) -> bytes:
        """The client's bytes with the routed model, less reasoning Anthropic did not sign (`_thinking`)."""
        return replace_model(passthrough_body(body, raw), model)


def bind_endpoints(settings: Settings, rules: Mapping[str, CompiledRules],
                   env: Mapping[str, str] | None = None) -> dict[str, Endpoint]:
    """One endpoint per configured provider whose rule set compiled."""
    endpoints: dict[str, Endpoint] = {}
    for name, provider in settings.providers.items():
        compiled = rules.get(provider.rules)
        if compiled is not None:
            kind = PassthroughEndpoint if compiled.passthrough else Endpoint
            endpoints[name] = kind(provider, compiled, env)
    return endpoints


def _provider_vars(settings: ProviderSettings, rules: CompiledRules,
                    env: Mapping[str, str] | None) -> dict[str, Any]:
    env = os.environ if env is None else env
    base_url = settings.base_url or rules.default("base_url", env) or ""
    return {
        "name": settings.name,
        "base_url": base_url.rstrip("/"),
        "api_key": settings.api_key or rules.default("api_key", env),
        "headers": {**(rules.default("headers", env) or {}), **settings.headers},
    }


def _undefined_as_null(value: Any) -> None:
    """A Jinja undefined inside a list or dict a template built (``[a.missing]``) encodes as null."""
    if isinstance(value, Undefined):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
