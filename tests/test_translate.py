"""`replace_model`: passthrough swaps the top-level model and keeps every other byte."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ccproxy_engine._translate import replace_model


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"model":"claude-x","max_tokens":5}', b'{"model":"gpt-4.1","max_tokens":5}'),
    (b'{ "messages":[{"model":"inner"}], "model" : "claude-x" , "a":{"b":"}"}}',
     b'{ "messages":[{"model":"inner"}], "model" : "gpt-4.1" , "a":{"b":"}"}}'),
    (b'{"a":"\\"model\\"","model":"x\\"y"}', b'{"a":"\\"model\\"","model":"gpt-4.1"}'),
    (b'{"system":"{\\"model\\": 1}","model":"m","z":[1,{"model":2}]}',
     b'{"system":"{\\"model\\": 1}","model":"gpt-4.1","z":[1,{"model":2}]}'),
    (b'\n {"model": "m"}\n', b'\n {"model": "gpt-4.1"}\n'),
])
def test_only_the_top_level_model_changes(raw: bytes, expected: bytes) -> None:
    assert replace_model(raw, "gpt-4.1") == expected


def test_a_body_without_model_is_re_encoded_with_it() -> None:
    assert json.loads(replace_model(b'{"max_tokens": 5}', "m")) == {"max_tokens": 5, "model": "m"}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["model", '"quoted"', "back\\slash", "}{][,:", "é☕", ""])
    if kind == "int":
        return rng.randint(-10, 10**6)
    if kind == "float":
        return rng.random()
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["model", "a", "b", "c"]): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_random_bodies_match_a_parse_and_re_encode() -> None:
    rng = random.Random(7)
    for _ in range(500):
        body = {key: random_value(rng) for key in rng.sample(["a", "model", "b", "messages", "z"], k=3)}
        raw = json.dumps(body, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1])).encode()
        expected = {**body, "model": "target"}
        assert json.loads(replace_model(raw, "target")) == expected, raw
