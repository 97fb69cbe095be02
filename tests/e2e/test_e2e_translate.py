"""`translate` prints exactly what `serve` sends: for real Claude Code requests, the request the fake
upstream received from the served proxy equals the one `ccproxy-engine translate` prints for the
same file (method, path, headers with the key masked, body byte for byte)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import orjson
import pytest
from e2e.support import UPSTREAM_KEY, Recorded, each_claude_code_request, replay
from fakes import FakeOpenAI, Text

from ccproxy_engine._cli import main

pytestmark = pytest.mark.e2e


@each_claude_code_request
def test_translate_prints_what_serve_sends(path: Path, http: httpx.Client, fake: FakeOpenAI, config_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    recorded = Recorded.load(path)
    fake.default = Text("ok")
    replay(http, recorded)
    sent = fake.last

    assert main(["translate", "--config", str(config_path), "--model", "openai/gpt-4.1", str(path)]) == 0
    out = capsys.readouterr().out
    head, _, body = out.partition("\n\n")
    first, *header_lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in header_lines)
    method, url = first.split(" ", 1)
    assert (method, httpx.URL(url).path) == (sent.method, sent.path)
    assert json.loads(body) == sent.body
    assert orjson.dumps(json.loads(body)) == sent.raw  # the same bytes, only indented for reading
    assert int(headers["content-length"]) == len(sent.raw)
    assert headers["authorization"] == "Bearer ***" and sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert UPSTREAM_KEY not in out
    unmasked = {name: value for name, value in headers.items() if name != "authorization"}
    assert unmasked == {name: sent.headers[name] for name in unmasked}
