"""One redaction step for every upstream text that can reach a client or a log.

Provider keys live in the proxy's config; an upstream error body that echoes the request's headers
(some gateways do) would otherwise hand them to whoever sent the request, and to the log. Every
`UpstreamError` message and every in-stream upstream error passes `redact`, which removes

* the keys of the configured providers (`remember` is called for each when the app is built), and
* anything shaped like a credential: ``Bearer <token>``, ``sk-…``/``sk_…``-style keys, Google
  ``AIza…`` keys, ``key=``/``token=`` query parameters and ``"api_key": "…"``-style pairs.

Redaction replaces the secret with ``[redacted]`` and keeps the rest of the text, so the message
still says what went wrong.
"""

from __future__ import annotations

import re
import threading

__all__ = ["MASK", "redact", "remember"]

MASK = "[redacted]"

#: Shorter strings are too likely to be ordinary words to be removed wherever they occur.
MIN_SECRET_LENGTH = 8

_SHAPES = [
    # Authorization: Bearer xxx / Basic xxx
    r"\b(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
    # vendor key shapes: sk-..., sk_live_..., gsk_..., xai-..., sk-ant-..., AIza...
    r"\b(?:sk|gsk|xai|pk|rk)[-_][A-Za-z0-9_-]{16,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
    # key=... in query strings and form bodies
    r"(?<=[?&;\s])(?i:api[_-]?key|key|token|access_token|secret|sig|signature)=(?!\*\*\*)[^&\s'\"]+",
    # "api_key": "...", x-api-key: ..., authorization: ...
    r"(?<=[\"'])(?i:x-api-key|api[_-]?key|x-goog-api-key|authorization|proxy-authorization)[\"']?\s*[:=]\s*[\"']?"
    r"[^\"',}\s]{8,}",
    r"\b(?i:x-api-key|x-goog-api-key|api-key|authorization)\s*:\s*[^\s,;\"'}]{8,}",
]



class _Redactor:
    """The configured secrets and the one pattern that finds them and every credential shape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self.pattern = re.compile("|".join(_SHAPES))

    def remember(self, secret: str) -> None:
        with self._lock:
            self._secrets.add(secret)
            literals = "|".join(re.escape(s) for s in sorted(self._secrets, key=len, reverse=True))
            self.pattern = re.compile(f"{literals}|{'|'.join(_SHAPES)}")

    def knows(self, secret: str) -> bool:
        return secret in self._secrets


_REDACTOR = _Redactor()


def remember(secret: str | None) -> None:
    """Add a configured secret (a provider's key) to what `redact` removes."""
    if secret and len(secret) >= MIN_SECRET_LENGTH and not _REDACTOR.knows(secret):
        _REDACTOR.remember(secret)


def redact(text: str) -> str:
    """`text` without configured secrets or credential-shaped values."""
    return _REDACTOR.pattern.sub(MASK, text)
