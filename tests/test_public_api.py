"""The public surface is exactly `ccproxy_engine.__all__`; everything else is private."""

import ccproxy_engine

EXPECTED = {
    "CompiledRules", "ConfigError", "Diagnostic", "DiagnosticCode", "EngineError", "ProviderSettings",
    "RequestError", "RouteTarget", "Routes", "RuleError", "Settings", "SetupError", "UpstreamError",
    "__version__", "compile_rules", "create_app", "load_config", "load_rules",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(ccproxy_engine.__all__) == EXPECTED
    public = {name for name in dir(ccproxy_engine) if not name.startswith("_")} | {"__version__"}
    assert public == EXPECTED
    assert ccproxy_engine.create_app.__module__ == "ccproxy_engine._app"
