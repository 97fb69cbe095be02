"""Stop sequences through a running proxy, for OpenAI and Gemini: the anthropic SDK in front, the fakes behind.

Both upstreams stop before a stop string with a plain stop and never say which one matched, so the
rules send none upstream and the engine scans the answer (emulate_stop_sequences). What the client
must see is what Anthropic answers: the text up to the match, ``stop_reason: stop_sequence`` and the
matched ``stop_sequence``. A stream is cut at the match: the proxy closes the upstream connection,
which the fake sees as a disconnect while it still had chunks to send.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest
from e2e.support import ask, serve_proxy, stream_events, text_deltas, user
from fakes import FakeOpenAI, serve_app
from fakes import Text as OpenAIText
from fakes.gemini_upstream import FakeGemini
from fakes.gemini_upstream import Text as GeminiText

pytestmark = pytest.mark.e2e

OPENAI_KEY, GEMINI_KEY = "sk-stop-e2e", "gemini-stop-e2e"
MODELS = {"openai": "claude-e2e-via-openai", "gemini": "claude-e2e-via-gemini"}
SEQUENCES = ["</answer>", "\n\nHuman:"]
BEFORE, PIECES = "<answer>4", ["<answer>4</", "ans", "wer> and what the model adds after it"]
TRAILING = [f" filler {i}" for i in range(40)]
SURE = 10.0


@dataclass(frozen=True)
class Upstreams:
    openai: FakeOpenAI
    gemini: FakeGemini


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstreams, str, str]]:
    openai, gemini = FakeOpenAI(api_key=OPENAI_KEY), FakeGemini(api_key=GEMINI_KEY)
    with serve_app(openai) as openai_url, serve_app(gemini) as gemini_url:
        yield Upstreams(openai, gemini), openai_url, gemini_url


@pytest.fixture(scope="module")
def proxy_url(upstreams: tuple[Upstreams, str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, openai_url, gemini_url = upstreams
    config = tmp_path_factory.mktemp("stop") / "ccproxy.yaml"
    config.write_text(
        "providers:\n"
        f"  openai: {{base_url: '{openai_url}/v1', api_key: {OPENAI_KEY}}}\n"
        f"  gemini: {{base_url: '{gemini_url}/v1beta', api_key: {GEMINI_KEY}}}\n"
        "routes:\n"
        "  default: openai/gpt-4.1\n"
        "  models:\n"
        f"    {MODELS['openai']}: openai/gpt-4.1\n"
        f"    {MODELS['gemini']}: gemini/gemini-2.5-pro\n",
        encoding="utf-8",
    )
    with serve_proxy(Path(config)) as url:
        yield url


@pytest.fixture(params=["openai", "gemini"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake(upstreams: tuple[Upstreams, str, str], provider: str) -> Iterator[FakeOpenAI | FakeGemini]:
    fakes = upstreams[0]
    chosen: FakeOpenAI | FakeGemini = fakes.openai if provider == "openai" else fakes.gemini
    chosen.reset()
    yield chosen
    if isinstance(chosen, FakeGemini):
        chosen.assert_all_accepted()
    else:
        chosen.assert_valid_with_sdk_types()


def text_reply(provider: str, chunks: list[str], **options: Any) -> OpenAIText | GeminiText:
    return OpenAIText(chunks=chunks, **options) if provider == "openai" else GeminiText(chunks=chunks, **options)


def sent_stop_sequences(provider: str, body: dict[str, Any]) -> Any:
    """What the upstream body says about stop sequences (None: nothing, as the engine owns them)."""
    if provider == "openai":
        return body.get("stop")
    return (body.get("generationConfig") or {}).get("stopSequences")


def wait_for_disconnect(fake: FakeOpenAI | FakeGemini) -> bool:
    deadline = time.monotonic() + SURE
    while time.monotonic() < deadline:
        if fake.last.disconnected:
            return True
        time.sleep(0.02)
    return False


def test_the_answer_ends_at_the_stop_sequence(client: anthropic.Anthropic, fake: FakeOpenAI | FakeGemini,
                                              provider: str, streamed: bool) -> None:
    fake.queue(text_reply(provider, PIECES))
    message = ask(client, streamed, model=MODELS[provider], stop_sequences=SEQUENCES, messages=user("2+2?"))
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [("text", BEFORE)]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "</answer>")
    assert sent_stop_sequences(provider, fake.last.body) is None


def test_a_stream_cut_at_the_match_closes_the_upstream(client: anthropic.Anthropic, fake: FakeOpenAI | FakeGemini,
                                                       provider: str) -> None:
    fake.queue(text_reply(provider, PIECES + TRAILING, delay_between_chunks=0.05))
    events, message = stream_events(client, model=MODELS[provider], max_tokens=256, stop_sequences=SEQUENCES,
                                    messages=user("2+2?"))
    assert "".join(text_deltas(events)) == BEFORE
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "</answer>")
    # the fake still had 40 chunks to send, 50 ms apart, when the match came
    assert wait_for_disconnect(fake), "the proxy must close the upstream once the stop sequence matched"


def test_no_match_is_a_plain_end_with_all_the_text(client: anthropic.Anthropic, fake: FakeOpenAI | FakeGemini,
                                                   provider: str, streamed: bool) -> None:
    chunks = ["Nearly </answ", "er but not quite: </", "answer"]
    fake.queue(text_reply(provider, chunks))
    message = ask(client, streamed, model=MODELS[provider], stop_sequences=SEQUENCES, messages=user("Go"))
    assert [getattr(block, "text", None) for block in message.content] == ["".join(chunks)]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert not fake.last.disconnected
