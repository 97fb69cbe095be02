"""ccproxy-engine: an Anthropic Messages API proxy whose provider translations are YAML rules.

Only the names in `__all__` are public; every module is private (``_name.py``) so the internals can
move. tests/test_public_api.py pins this list.
"""

import typing as _typing

from ._compiler import CompiledRules, compile_rules
from ._config import ProviderSettings, Routes, RouteTarget, Settings, load_config
from ._errors import (
    ConfigError,
    Diagnostic,
    DiagnosticCode,
    EngineError,
    RequestError,
    RuleError,
    SetupError,
    UpstreamError,
)
from ._loader import load_rules

if _typing.TYPE_CHECKING:
    from ._app import create_app

__version__ = "0.1.0"


def __getattr__(name: str) -> _typing.Any:
    # the HTTP app pulls in litestar and aiohttp (about 0.3 s of imports); `validate` and the rule
    # tooling never need them, so `create_app` is imported on first use
    if name == "create_app":
        from ._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "create_app"})

__all__ = [
    "CompiledRules",
    "ConfigError",
    "Diagnostic",
    "DiagnosticCode",
    "EngineError",
    "ProviderSettings",
    "RequestError",
    "RouteTarget",
    "Routes",
    "RuleError",
    "Settings",
    "SetupError",
    "UpstreamError",
    "__version__",
    "compile_rules",
    "create_app",
    "load_config",
    "load_rules",
]
