"""ccproxy-engine: an Anthropic Messages API proxy whose provider translations are YAML rules.

Only the names in `__all__` are public; every module is private (``_name.py``) so the internals can
move. tests/test_public_api.py pins this list.
"""

from ._app import create_app
from ._compiler import CompiledProvider, compile_rules
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

__version__ = "0.1.0"

__all__ = [
    "CompiledProvider",
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
