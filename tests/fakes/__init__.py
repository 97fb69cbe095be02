"""Fake upstreams for tests: ASGI apps that speak a provider's real wire format, scripted per test.

from tests.fakes import FakeOpenAI, Text, ToolCalls, Call, serve_app
"""

from .dialects import DIALECTS, dialect
from .openai_upstream import (
    OPENAI,
    Call,
    Chunks,
    Dialect,
    DialectCheck,
    Error,
    FakeOpenAI,
    Reasoning,
    ReasoningDetails,
    ReceivedRequest,
    Reply,
    Scripted,
    StreamAborted,
    Text,
    ToolCalls,
    TypeProblem,
    Usage,
    check_sdk_types,
    chunk,
    completion_body,
    encode_stream,
    validate_chat_request,
)
from .server import aserve_app, serve_app

__all__ = [
    "DIALECTS",
    "OPENAI",
    "Call",
    "Chunks",
    "Dialect",
    "DialectCheck",
    "Error",
    "FakeOpenAI",
    "Reasoning",
    "ReasoningDetails",
    "ReceivedRequest",
    "Reply",
    "Scripted",
    "StreamAborted",
    "Text",
    "ToolCalls",
    "TypeProblem",
    "Usage",
    "aserve_app",
    "check_sdk_types",
    "chunk",
    "completion_body",
    "dialect",
    "encode_stream",
    "serve_app",
    "validate_chat_request",
]
