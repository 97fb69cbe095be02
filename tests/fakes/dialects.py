"""The OpenAI-compatible providers the engine ships rules for, as dialects the fake upstream speaks.

Each `Dialect` (fakes/openai_upstream.py) says what one provider adds to OpenAI's wire format: the
request keys it takes beyond the openai SDK types, the request rules it enforces (with its own error
bodies, wording taken from real reports: protocols.md 2.11), how it reports usage and how it streams.
`FakeOpenAI(dialect=DIALECTS["mistral"])` then behaves like Mistral, and the rule-case runner takes
each provider's default model and extra keys from the same table.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from .openai_upstream import OPENAI, Dialect, Error, JSONObject, Usage

__all__ = ["DIALECTS", "MISTRAL_BODY_KEYS", "dialect"]


def _messages(body: JSONObject) -> list[dict[str, Any]]:
    return [m for m in body.get("messages") or () if isinstance(m, dict)]


# --- DeepSeek ----------------------------------------------------------------------------------

DEEPSEEK_MAX_TOKENS = {"deepseek-chat": 8192, "deepseek-reasoner": 65536}
DEEPSEEK_DOCS = "https://api-docs.deepseek.com/guides/thinking_mode#tool-calls"


def _deepseek_thinking_shape(body: JSONObject) -> Error | None:
    thinking = body.get("thinking")
    if thinking is None or thinking in ({"type": "enabled"}, {"type": "disabled"}):
        return None
    return Error(400, f"Failed to deserialize the JSON body into the target type: thinking: {thinking!r}")


def _deepseek_max_tokens(body: JSONObject) -> Error | None:
    limit = DEEPSEEK_MAX_TOKENS.get(str(body.get("model")))
    value = body.get("max_tokens")
    if limit is None or value is None or 1 <= value <= limit:
        return None
    return Error(400, f"Invalid max_tokens value, the valid range of max_tokens is [1, {limit}]")


def _deepseek_reasoning_echo(body: JSONObject) -> Error | None:
    """In thinking mode, an assistant turn that called tools must carry its reasoning_content back."""
    thinking = (body.get("thinking") or {}).get("type")
    if thinking == "disabled" or (body.get("model") == "deepseek-chat" and thinking != "enabled"):
        return None
    for index, message in enumerate(_messages(body)):
        if message.get("role") == "assistant" and message.get("tool_calls") and \
                not isinstance(message.get("reasoning_content"), str):
            return Error(400, f"Missing `reasoning_content` field in the assistant message at message index "
                              f"{index}. For more information, please refer to {DEEPSEEK_DOCS}",
                         code="invalid_request_error")
    return None


def _deepseek_usage(usage: Usage) -> JSONObject:
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_cache_hit_tokens": usage.cached,
        "prompt_cache_miss_tokens": usage.prompt - usage.cached,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


# --- OpenRouter --------------------------------------------------------------------------------


def _openrouter_error(error: Error) -> JSONObject:
    return {"error": {"message": error.message, "code": error.status}}


OPENROUTER_DETAIL_FIELDS = {"reasoning.text": "text", "reasoning.summary": "summary", "reasoning.encrypted": "data"}
OPENROUTER_REASONING_DOCS = "https://openrouter.ai/docs/guides/best-practices/reasoning-tokens#preserving-reasoning"


def _openrouter_reasoning_details(body: JSONObject) -> Error | None:
    """Reasoning details come back as they were returned: each of a known type with its content, and
    in their original order (their `index` never goes down), or the vendor behind refuses the turn."""
    for position, message in enumerate(_messages(body)):
        details = message.get("reasoning_details")
        if details is None:
            continue
        where = f"messages[{position}].reasoning_details"
        if not isinstance(details, list):
            return Error(400, f"{where} must be an array")
        last = -1
        for number, detail in enumerate(details):
            field_name = OPENROUTER_DETAIL_FIELDS.get(detail.get("type")) if isinstance(detail, dict) else None
            if field_name is None or not isinstance(detail.get(field_name), str):
                return Error(400, f"{where}[{number}] is not a reasoning detail OpenRouter returned: {detail!r}")
            index = detail.get("index", last)
            if not isinstance(index, int) or index < last:
                return Error(400, f"{where}[{number}] (index {index}) comes after index {last}: reasoning_details "
                                  "must be passed back unmodified and in their original order "
                                  f"({OPENROUTER_REASONING_DOCS})")
            last = index
    return None


# --- Groq --------------------------------------------------------------------------------------


def _groq_reasoning_format(body: JSONObject) -> Error | None:
    if "reasoning_format" in body and str(body.get("model")).startswith("openai/gpt-oss"):
        return Error(400, "reasoning_format is not supported with this model", param="reasoning_format")
    return None


# --- xAI ---------------------------------------------------------------------------------------

XAI_REASONING_REJECTS = ("reasoning_effort", "stop", "presence_penalty", "frequency_penalty")


def _xai_reasoning_arguments(body: JSONObject) -> Error | None:
    """Grok 4's reasoning models refuse these; its -non-reasoning variants take them."""
    model = str(body.get("model"))
    if not model.startswith("grok-4") or model.endswith("-non-reasoning"):
        return None
    for key in XAI_REASONING_REJECTS:
        if key in body:
            return Error(400, f"Argument not supported on this model: {key}")
    return None


def _xai_usage(usage: Usage) -> JSONObject:
    """xAI counts reasoning beside completion_tokens, not inside it."""
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion - usage.reasoning,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"text_tokens": usage.prompt, "cached_tokens": usage.cached},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


# --- Mistral -----------------------------------------------------------------------------------

MISTRAL_BODY_KEYS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed",
    "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n",
    "prediction", "parallel_tool_calls", "prompt_mode", "safe_prompt", "metadata",
})
"""The request fields Mistral's chat completions take; any other is a 422."""
MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def _mistral_error(error: Error) -> JSONObject:
    return {"object": "error", "message": error.message, "type": error.error_type, "param": error.param,
            "code": error.code}


def _mistral_extra_fields(body: JSONObject) -> Error | None:
    extra = sorted(body.keys() - MISTRAL_BODY_KEYS)
    if not extra:
        return None
    detail = [{"type": "extra_forbidden", "loc": ["body", key], "msg": "Extra inputs are not permitted",
               "input": body[key]} for key in extra]
    return Error(422, "Extra inputs are not permitted",
                 body={"object": "error", "message": {"detail": detail}, "type": "invalid_request_error",
                       "param": None, "code": None})


def _mistral_tool_call_ids(body: JSONObject) -> Error | None:
    for message in _messages(body):
        ids = [call.get("id") for call in message.get("tool_calls") or () if isinstance(call, dict)]
        if message.get("role") == "tool":
            ids.append(message.get("tool_call_id"))
        for call_id in ids:
            if not isinstance(call_id, str) or not MISTRAL_ID.fullmatch(call_id):
                return Error(400, f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9.",
                             type="invalid_function_call", code="3280")
    return None


def _mistral_role_order(body: JSONObject) -> Error | None:
    messages = _messages(body)
    for previous, message in itertools.pairwise(messages):
        if previous.get("role") == "tool" and message.get("role") in ("user", "system"):
            return Error(400, f"Unexpected role '{message.get('role')}' after role 'tool'",
                         type="invalid_request_message_error", code="3230")
    return None


# --- Ollama and other local servers -----------------------------------------------------------


def _no_reasoning_echo(body: JSONObject) -> Error | None:
    """Reasoning sent back in the history breaks some local model templates (protocols.md 2.11)."""
    for index, message in enumerate(_messages(body)):
        for key in ("reasoning_content", "reasoning", "thinking"):
            if key in message:
                return Error(400, f"messages[{index}]: unexpected field {key!r}")
    return None


def _vllm_error(error: Error) -> JSONObject:
    return {"object": "error", "message": error.message, "type": "BadRequestError", "param": error.param,
            "code": error.status}


def _max_tokens_only(body: JSONObject) -> Error | None:
    if "max_completion_tokens" in body:
        return Error(400, "max_completion_tokens is not supported; use max_tokens", param="max_completion_tokens")
    return None


DIALECTS: dict[str, Dialect] = {
    dialect.name: dialect
    for dialect in (
        OPENAI,
        Dialect(
            "deepseek", "deepseek-chat",
            allow_extra=frozenset({"thinking", "messages[].reasoning_content"}),
            checks=(_deepseek_thinking_shape, _deepseek_max_tokens, _deepseek_reasoning_echo),
            usage=_deepseek_usage,
        ),
        Dialect(
            "openrouter", "anthropic/claude-sonnet-4",
            allow_extra=frozenset({"reasoning", "messages[].reasoning_details", "messages[].content[].cache_control"}),
            checks=(_openrouter_reasoning_details,),
            error_body=_openrouter_error,
            sse_comments=True,
        ),
        Dialect(
            "groq", "openai/gpt-oss-120b",
            allow_extra=frozenset({"reasoning_format"}),
            checks=(_groq_reasoning_format,),
        ),
        Dialect("xai", "grok-4", checks=(_xai_reasoning_arguments,), usage=_xai_usage),
        Dialect(
            "mistral", "mistral-large-latest",
            checks=(_mistral_extra_fields, _mistral_tool_call_ids, _mistral_role_order),
            error_body=_mistral_error,
        ),
        Dialect("ollama", "llama3.1", checks=(_no_reasoning_echo,), omit_tool_call_index=True),
        Dialect(
            "openai-compatible", "qwen2.5-coder-32b-instruct",
            checks=(_max_tokens_only, _no_reasoning_echo),
            error_body=_vllm_error,
        ),
    )
}
"""Every dialect by provider name (the rule file's stem)."""


def dialect(provider: str) -> Dialect:
    """The dialect of a provider; OpenAI's for any provider without one of its own."""
    return DIALECTS.get(provider, OPENAI)
