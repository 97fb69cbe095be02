"""The container image and the Kubernetes manifests do what docs/deployment.md says.

No container engine or cluster runs here. Instead: the Dockerfile's own ENTRYPOINT and CMD (parsed, not
copied) start the server from a clean install of the wheel; the manifests' cross references (names,
ports, paths, mounts, user ids) are checked against each other and against the Dockerfile; the config
the ConfigMap carries passes `validate`. scripts/test also lints the Dockerfile (hadolint) and checks
the manifests against the Kubernetes API schemas (kubernetes-validate).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from e2e.support import MODEL, user
from e2e.test_e2e_cli import free_port, stop, wait_healthy
from fakes import FakeOpenAI, Text, serve_app
from ruamel.yaml import YAML

from ccproxy_engine import ConfigError, load_config
from ccproxy_engine._cli import prepare, validate

dockerfile_parse = pytest.importorskip("dockerfile_parse", reason="needs the deploy extra: pip install -e '.[deploy]'")

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
SERVER_KEY = "sk-proxy-deploy-test"
UPSTREAM_KEY = "sk-upstream-deploy-test"


# --- the Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One FROM stage of the Dockerfile: its base image and instructions as (name, value)."""

    base: str
    instructions: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for instruction, value in self.instructions if instruction == name]

    def exec_form(self, name: str) -> list[str]:
        """The JSON (exec) form of ENTRYPOINT or CMD, which runs without a shell."""
        (value,) = self.values(name)
        parsed: list[str] = json.loads(value)
        return parsed

    def copies(self) -> list[tuple[str, str]]:
        """(source, destination) of each file or directory copied from the build context (COPY
        --from another stage copies no repository file)."""
        found = []
        for value in self.values("COPY"):
            *sources, destination = shlex.split(value)
            if not any(s.startswith("--from") for s in sources):
                found.extend((source, destination) for source in sources)
        return found

    def in_image(self) -> dict[str, str]:
        """Path in the image → the repository file copied there (single-file copies to a full path)."""
        return {destination: source for source, destination in self.copies() if not destination.endswith("/")}


def stages() -> list[Stage]:
    parsed = dockerfile_parse.DockerfileParser(str(ROOT / "Dockerfile"))
    result: list[Stage] = []
    for item in parsed.structure:
        if item["instruction"] == "FROM":
            result.append(Stage(item["value"].split()[0], []))
        elif item["instruction"] != "COMMENT":
            result[-1].instructions.append((item["instruction"], item["value"]))
    return result


def image_env() -> dict[str, str]:
    env: dict[str, str] = dockerfile_parse.DockerfileParser(str(ROOT / "Dockerfile")).envs
    return env


def healthcheck_command() -> list[str]:
    (value,) = stages()[-1].values("HEALTHCHECK")
    command: list[str] = json.loads(value.partition("CMD")[2])
    return command


def image_uid() -> int:
    (user_value,) = stages()[-1].values("USER")
    return int(user_value.partition(":")[0])


def test_the_image_is_slim_python_and_runs_as_a_non_root_user() -> None:
    final = stages()[-1]
    assert re.fullmatch(r"python:3\.\d+-slim", final.base), final.base
    assert image_uid() >= 1000
    assert final.exec_form("ENTRYPOINT") == ["ccproxy-engine", "serve"]
    assert "/health" in " ".join(healthcheck_command())


def test_the_image_config_is_a_repository_file_the_cmd_names() -> None:
    final = stages()[-1]
    config = final.exec_form("CMD")[final.exec_form("CMD").index("--config") + 1]
    assert final.in_image()[config] == "deploy/docker/config.yaml"


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: the last pattern matching the path or one of
    its parent directories decides, and a leading ! re-includes."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").removeprefix("**/")
        if any(fnmatch.fnmatchcase(p, glob) or fnmatch.fnmatchcase(Path(p).name, glob) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_every_file_the_build_copies_and_drops_the_rest() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [source.rstrip("/") for stage in stages() for source, _ in stage.copies()]
    assert sources
    assert [s for s in sources if _ignored(s, patterns)] == []
    assert _ignored(".venv", patterns)
    assert _ignored("tests/test_deploy.py", patterns)
    assert _ignored("engine/__pycache__", patterns)


# --- the image's config --------------------------------------------------------------------------

CONTAINER_CONFIG = ROOT / "deploy" / "docker" / "config.yaml"


def test_the_image_config_listens_everywhere_with_the_key_from_the_environment() -> None:
    settings = load_config(CONTAINER_CONFIG, {"CCPROXY_API_KEY": SERVER_KEY, "OPENAI_API_KEY": UPSTREAM_KEY})
    assert (settings.host, settings.port, settings.api_key) == ("0.0.0.0", 3456, SERVER_KEY)
    assert list(settings.providers) == ["openai"]
    assert [str(t) for t in settings.routes.default] == ["openai/gpt-4.1"]
    assert {d.code for d in settings.warnings} == {"missing-env"}  # the providers left off


def test_the_image_config_refuses_to_start_without_the_server_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(CONTAINER_CONFIG, {"OPENAI_API_KEY": UPSTREAM_KEY})
    messages = [d.message for d in caught.value.errors]
    assert messages == ["environment variable CCPROXY_API_KEY is not set; set it or write "
                        "${CCPROXY_API_KEY:-default}"]


def test_the_image_config_routes_where_the_environment_says() -> None:
    env = {"CCPROXY_API_KEY": SERVER_KEY, "DEEPSEEK_API_KEY": UPSTREAM_KEY,
           "CCPROXY_DEFAULT_ROUTE": "deepseek/deepseek-chat", "CCPROXY_HOST": "127.0.0.1", "CCPROXY_PORT": "8080"}
    settings = load_config(CONTAINER_CONFIG, env)
    assert list(settings.providers) == ["deepseek"]
    assert [str(t) for t in settings.routes.default] == ["deepseek/deepseek-chat"]
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


# --- the entrypoint, from a clean install of the wheel -------------------------------------------


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel (and its dependencies) installed; its bin directory.

    The wheel is built from a copy of exactly what the build stage COPYs, as `docker build` would."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    for source, _ in stages()[0].copies():
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", str(root / "wheels"), str(context)])
    (wheel,) = (root / "wheels").glob("ccproxy_engine-*.whl")
    # a venv without pip of its own (ensurepip takes seconds); this pip installs into it
    _run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")])
    _run([*pip, "--python", str(root / "venv" / "bin" / "python"), "install", str(wheel)])
    return root / "venv" / "bin"


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout}{result.stderr}"


@dataclass(frozen=True)
class Container:
    """The image's command running on this machine: its base URL, environment and scratch directory."""

    url: str
    env: dict[str, str]
    scratch: Path
    installed: set[tuple[str, float]]
    """Every file of the install, with its modification time, before the server started."""


def files_of(directory: Path) -> set[tuple[str, float]]:
    return {(str(path), path.stat().st_mtime) for path in directory.rglob("*") if path.is_file()}


def container_env(bin_dir: Path, scratch: Path, port: int, upstream: str) -> dict[str, str]:
    """What the container would see: the Dockerfile's ENV, the venv first on PATH (as the image's
    Python is), and the variables a user passes with `docker run -e`."""
    return {
        **image_env(), "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch),
        "CCPROXY_API_KEY": SERVER_KEY, "OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": f"{upstream}/v1",
        # loopback only: tests never listen on every interface
        "CCPROXY_HOST": "127.0.0.1", "CCPROXY_PORT": str(port),
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    with serve_app(fake) as url:
        yield fake, url


@pytest.fixture(scope="module")
def container(clean_install: Path, upstream: tuple[FakeOpenAI, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """ENTRYPOINT + CMD exactly as the Dockerfile has them; in-image paths map to the files COPY put there."""
    final = stages()[-1]
    in_image = final.in_image()
    command = [str(ROOT / in_image[arg]) if arg in in_image else arg
               for arg in [*final.exec_form("ENTRYPOINT"), *final.exec_form("CMD")]]
    scratch = tmp_path_factory.mktemp("scratch")
    port = free_port()
    env = container_env(clean_install, scratch, port, upstream[1])
    installed = files_of(clean_install.parent)
    process = subprocess.Popen(command, env=env, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield Container(url, env, scratch, installed)
    finally:
        output = stop(process)
    assert "Traceback" not in output, output


@pytest.mark.e2e
def test_the_entrypoint_serves_from_a_clean_install(container: Container, upstream: tuple[FakeOpenAI, str],
                                                    clean_install: Path) -> None:
    fake, _ = upstream
    fake.queue(Text(chunks=["Hello ", "from the image."]))
    with anthropic.Anthropic(base_url=container.url, api_key=SERVER_KEY, max_retries=0, timeout=20) as sdk:
        message = sdk.messages.create(model=MODEL, max_tokens=64, messages=user("Hi"))
    assert message.content[0].text == "Hello from the image."  # type: ignore[union-attr]
    # the key came from the environment: without it, nothing but the probes answers
    sent = len(fake.requests)
    refused = httpx.post(f"{container.url}/v1/messages", json={"model": MODEL, "max_tokens": 8,
                                                               "messages": user("Hi")}, timeout=10)
    assert (refused.status_code, refused.json()["error"]["type"]) == (401, "authentication_error")
    assert len(fake.requests) == sent
    # the built-in rules came with the wheel: validate finds them with no repository around
    checked = subprocess.run([str(clean_install / "ccproxy-engine"), "validate"], cwd=container.scratch,
                             env=container.env, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    # so did the dashboard's page and assets
    for path in ("/ui", "/ui/assets/app.js", "/ui/assets/app.css"):
        assert httpx.get(f"{container.url}{path}", timeout=10).status_code == 200, path
    # the server wrote nothing, neither in its home and temp directory nor in its install: a read-only
    # root file system serves
    assert list(container.scratch.iterdir()) == []
    assert files_of(clean_install.parent) == container.installed


@pytest.mark.e2e
def test_the_healthcheck_command_tells_up_from_down(container: Container) -> None:
    def healthcheck(env: dict[str, str]) -> int:
        return subprocess.run(healthcheck_command(), env=env, capture_output=True, check=False).returncode

    assert healthcheck(container.env) == 0
    assert healthcheck({**container.env, "CCPROXY_PORT": str(free_port())}) != 0


# --- the Kubernetes manifests --------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/kubernetes, by (kind, name); kustomization.yaml is not an API object."""
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in YAML(typ="safe").load_all(path.read_text(encoding="utf-8")):
            found[doc["kind"], doc["metadata"]["name"]] = {**doc, "file": path.name}
    return found


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return manifests()


@pytest.fixture(scope="module")
def deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment", "ccproxy-engine"]


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    (spec,) = pod(deployment)["containers"]
    result: dict[str, Any] = spec
    return result


def test_kustomization_applies_everything_but_the_secret_template(
        objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    kustomization = YAML(typ="safe").load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {obj["file"] for obj in objects.values()}
    assert set(kustomization["resources"]) == files - {"secret.template.yaml"}
    assert {obj["kind"] for obj in objects.values() if obj["file"] == "secret.template.yaml"} == {"Secret"}


def test_service_autoscaler_and_budget_find_the_pods(objects: dict[tuple[str, str], dict[str, Any]],
                                                     deployment: dict[str, Any]) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = objects["Service", "ccproxy-engine"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {port["name"] for port in container_spec(deployment)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    assert objects["PodDisruptionBudget", "ccproxy-engine"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = objects["HorizontalPodAutoscaler", "ccproxy-engine"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ccproxy-engine")
    assert objects["HorizontalPodAutoscaler", "ccproxy-engine"]["spec"]["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it


def test_every_probe_asks_health_on_the_served_port(deployment: dict[str, Any]) -> None:
    spec = container_spec(deployment)
    port_names = {port["name"] for port in spec["ports"]}
    probes = [spec[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert all(probe["httpGet"]["path"] == "/health" and probe["httpGet"]["port"] in port_names for probe in probes)


def test_pods_run_as_the_image_user_and_the_key_comes_from_a_secret(
        objects: dict[tuple[str, str], dict[str, Any]], deployment: dict[str, Any]) -> None:
    security = pod(deployment)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == image_uid()
    spec = container_spec(deployment)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert "limits" in spec["resources"] and "requests" in spec["resources"]
    (key,) = [env for env in spec["env"] if env["name"] == "CCPROXY_API_KEY"]
    ref = key["valueFrom"]["secretKeyRef"]
    assert ref["key"] in objects["Secret", ref["name"]]["stringData"]
    for source in spec["envFrom"]:
        assert ("Secret", source["secretRef"]["name"]) in objects


def mounted_files(deployment: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """Path inside the container → the ConfigMap text mounted there."""
    volumes = {volume["name"]: volume for volume in pod(deployment)["volumes"]}
    files = {}
    for mount in container_spec(deployment)["volumeMounts"]:
        config_map = volumes[mount["name"]].get("configMap")
        if config_map is None:
            continue
        data = objects["ConfigMap", config_map["name"]]["data"]
        items = config_map.get("items") or [{"key": key, "path": key} for key in data]
        files.update({f"{mount['mountPath']}/{item['path']}": data[item["key"]] for item in items})
    return files


def test_the_configmap_config_and_rules_validate_as_mounted(
        objects: dict[tuple[str, str], dict[str, Any]], deployment: dict[str, Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The args' --config and --rules point at mounted files, which pass `validate` and start a server
    with the keys the Secret template lists."""
    files = mounted_files(deployment, objects)
    for path, text in files.items():
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_text(text, encoding="utf-8")
    args = container_spec(deployment)["args"]
    config = args[args.index("--config") + 1]
    rules = args[args.index("--rules") + 1]
    assert config in files
    assert any(path.startswith(rules + "/") for path in files)
    local = [tmp_path / config.lstrip("/"), tmp_path / rules.lstrip("/")]
    for secret in (obj for obj in objects.values() if obj["kind"] == "Secret"):
        for name in secret["stringData"]:
            monkeypatch.setenv(name, f"test-{name.lower()}")
    assert [d.format() for d in validate(local) if d.severity == "error"] == []
    settings, _ = prepare(local[0], [local[1]])
    assert settings.api_key == "test-ccproxy_api_key"
    assert (settings.host, settings.port) == ("0.0.0.0", container_spec(deployment)["ports"][0]["containerPort"])
    assert set(settings.providers) == {"openai", "together"}


def test_prometheus_annotations_point_at_metrics_and_the_docs_job_reads_them(deployment: dict[str, Any]) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_spec(deployment)["ports"][0]["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics"
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    job = next(block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if "scrape_configs" in block)
    (scrape,) = YAML(typ="safe").load(job)["scrape_configs"]
    sources = {label for rule in scrape["relabel_configs"] for label in rule["source_labels"]}
    for name in annotations:
        assert "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-z0-9]", "_", name) in sources
    assert scrape["authorization"]["type"] == "Bearer"
