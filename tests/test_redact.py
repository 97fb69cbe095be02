"""`redact`: configured keys and credential-shaped values never survive an upstream text."""

from __future__ import annotations

import pytest

from ccproxy_engine._errors import UpstreamStatusError
from ccproxy_engine._redact import MASK, redact, remember

CONFIGURED = "cfg-provider-key-9f8e7d6c"


@pytest.mark.parametrize("text", [
    "Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    'echoed {"Authorization": "Bearer abcdefghijklmnop1234"}',
    "x-goog-api-key: AIzaSyA12345678901234567890123456789012",
    "GET https://host/v1/models?key=AIzaSyA12345678901234567890123456789012",
    "request had api_key=supersecretvalue123",
    '{"x-api-key": "sk-ant-api03-abcdefghijklmnop"}',
    "gsk_abcdefghijklmnopqrstuvwxyz012345 was rejected",
])
def test_credential_shapes_are_removed(text: str) -> None:
    out = redact(text)
    assert MASK in out
    for secret in ("sk-proj-abcdef", "abcdefghijklmnop1234", "AIzaSyA1234", "supersecretvalue123",
                   "sk-ant-api03", "gsk_abcdef"):
        assert secret not in out


def test_configured_keys_are_removed_whatever_their_shape() -> None:
    remember(CONFIGURED)
    assert redact(f"the key {CONFIGURED} is not valid") == f"the key {MASK} is not valid"


def test_ordinary_text_is_kept() -> None:
    text = "model 'gpt-4.1' does not support tool_choice; a token limit of 8192 applies (key: value)"
    assert redact(text) == text


def test_upstream_errors_are_redacted_when_made() -> None:
    remember(CONFIGURED)
    error = UpstreamStatusError("openai", f"bad key {CONFIGURED}", status=401)
    assert error.message == f"[openai] bad key {MASK}"


def test_short_values_are_not_remembered() -> None:
    remember("abc")
    assert redact("abc is a word") == "abc is a word"
