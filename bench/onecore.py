"""The proxy on one core, measured the way a user's benchmark would, in one run.

    bash bench/install_competitors.sh            # optional, once: the other proxies, into bench/.scratch/
    .venv/bin/python bench/onecore.py [--seconds 5] [--runs 3] [--compare REF] [--variant NAME=DIR] [--only NAME]

Layout (2 cores): each proxy runs alone on core 1 (``taskset -c 1``, so its whole process tree:
granian's parent and worker, node, LiteLLM's workers); this script, the load generator (wrk, one
thread) and the fake OpenAI upstream (bench/upstream.py under granian) share core 0. Everything
listens on 127.0.0.1.

Targets, one after another (each started, measured and stopped before the next):
  * ``upstream alone``: the fake upstream driven directly, with an OpenAI body of the same size. It
    is the floor: the load generator and the upstream together, on their one core. A proxy far
    below it is measured, not the generator.
  * ``ccproxy-engine``: the real ``ccproxy-engine serve --config`` of this checkout.
  * ``ccproxy-engine@REF`` (``--compare REF``, repeatable): the engine/ of a git ref, extracted with
    ``git archive`` into bench/.scratch/ and served by the same command: a before/after in one run.
  * ``ccproxy-engine NAME`` (``--variant NAME=DIR``): the ccproxy_engine package in DIR, e.g. the
    copy bench/wired_variant.py makes with this checkout's prototypes wired into the app.
  * ``claude-code-router`` and ``litellm``, when bench/install_competitors.sh installed them.

Per target: cold start (process start to the first valid /v1/messages answer, a 10 KB request),
idle RSS of the process tree (summed VmRSS, 2 s after that answer; PSS too), then ``--runs`` rounds
of: wrk at c=1 and c=32 on the 10 KB request and on a 100 KB Claude Code request (requests/s, p50
and p99), a 40-chunk stream at c=8 (Python client: time to the first text token, time to the end)
and the proxy tree's CPU time per request at c=32. Medians of the rounds are reported; "added"
means minus the upstream alone's figure for the same load, measured in the same run. The machine is
shared, so only the ratios and differences within one run mean much.

Writes bench/results/onecore-<time>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SCRATCH = BENCH / ".scratch"
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))
from translate import large_request, small_request  # noqa: E402

LOAD_CORE, PROXY_CORE = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADERS = {"content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01",
           "authorization": "Bearer sk-bench"}
MODEL = "claude-sonnet-4-5"


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (through every thread's children list)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    queue.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return pids


def _status_kb(pid: int, key: str, path: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{path}") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(summed RSS, summed PSS) of the process tree, in MB (10^6 bytes)."""
    pids = tree_pids(pid)
    rss = sum(_status_kb(p, "VmRSS") for p in pids)
    pss = sum(_status_kb(p, "Pss", "smaps_rollup") for p in pids)
    return rss * 1024 / 1e6, pss * 1024 / 1e6


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process tree so far (all threads)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            continue
    return total / CLK_TCK


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT to the process group this script started, then SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def valid_message(port: int, body: bytes, path: str = "/v1/messages") -> bool:
    """One POST; True when it answers 200 with an Anthropic message (or an OpenAI completion)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=HEADERS)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status} from {path}: {data[:300]!r}")
    kind = orjson.loads(data).get("type") or orjson.loads(data).get("object")
    return kind in ("message", "chat.completion")


def wait_first_answer(port: int, body: bytes, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Poll until the first valid answer (connection refused / reset means: not up yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before answering")
        try:
            if valid_message(port, body):
                return
        except (TimeoutError, ConnectionError, http.client.RemoteDisconnected):
            time.sleep(0.005)
    raise RuntimeError("no valid answer in time")


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    command: list[str] | None = None
    """None for the upstream alone (nothing to start)."""
    env: dict[str, str] = field(default_factory=dict)
    path: str = "/v1/messages"
    is_openai: bool = False
    port: int = 0


def ccproxy_target(name: str, upstream_port: int, pythonpath: str | None = None) -> Target:
    port = free_port()
    config = Path(tempfile.mkdtemp(prefix="onecore-")) / "config.yaml"
    config.write_text(f"providers:\n  openai: {{base_url: 'http://127.0.0.1:{upstream_port}/v1', "
                      "api_key: sk-bench}\nroutes:\n  default: openai/gpt-4.1\n")
    env = {"PYTHONPATH": pythonpath} if pythonpath else {}
    script = Path(sys.executable).parent / "ccproxy-engine"
    return Target(name, [str(script), "serve", "--config", str(config), "--port", str(port)], env, port=port)


def extract_ref(ref: str) -> str:
    """engine/ of git `ref` under bench/.scratch/ref-<ref>/ccproxy_engine, for PYTHONPATH."""
    destination = SCRATCH / f"ref-{re.sub(r'[^A-Za-z0-9_.-]', '_', ref)}"
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    # engine/rules and engine/schemas are symlinks to ../rules and ../schemas: those come along
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "engine", "rules", "schemas"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(destination, filter="data")
    (destination / "engine").rename(destination / "ccproxy_engine")
    return str(destination)


def ccr_target(upstream_port: int) -> Target | None:
    cli = SCRATCH / "ccr/node_modules/@musistudio/claude-code-router/dist/cli.js"
    if not cli.exists():
        return None
    port = free_port()
    home = SCRATCH / "ccr-home"
    (home / ".claude-code-router").mkdir(parents=True, exist_ok=True)
    (home / ".claude-code-router/claude-code-router.pid").unlink(missing_ok=True)
    (home / ".claude-code-router/config.json").write_text(json.dumps({
        "LOG": False, "HOST": "127.0.0.1", "PORT": port, "NON_INTERACTIVE_MODE": True,
        "Providers": [{"name": "openai", "api_base_url": f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                       "api_key": "sk-bench", "models": ["gpt-4.1"]}],
        "Router": {"default": "openai,gpt-4.1"}}))
    return Target("claude-code-router", [shutil.which("node") or "node", str(cli), "start"],
                  {"HOME": str(home)}, port=port)


def litellm_target(upstream_port: int) -> Target | None:
    binary = SCRATCH / "litellm-venv/bin/litellm"
    if not binary.exists():
        return None
    port = free_port()
    config = SCRATCH / "litellm.yaml"
    config.write_text(f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/gpt-4.1\n"
                      f"      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: sk-bench\n"
                      # Claude Code's thinking settings have no gpt-4.1 equivalent: drop, as ccproxy-engine does
                      "litellm_settings:\n  drop_params: true\n")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
           # /v1/messages to an OpenAI model: chat completions like the other proxies, not /v1/responses
           "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "true"}
    return Target("litellm", [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                              "--num_workers", "1"], env, port=port)


# -- load ---------------------------------------------------------------------------------------


def wrk(port: int, path: str, body_file: Path, concurrency: int, seconds: float) -> dict[str, float]:
    """One wrk run (one thread, on this script's core); requests/s and latency percentiles in ms."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
         "-s", str(BENCH / "wrk_post.lua"), f"http://127.0.0.1:{port}{path}"],
        env={**os.environ, "BENCH_BODY": str(body_file)}, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    data = json.loads(line[len("WRKJSON "):])
    if data["status_errors"] or data["socket_errors"]:
        raise RuntimeError(f"wrk saw errors: {data}")
    done = data["requests"]
    return {"requests": done, "rps": done / (data["duration_us"] / 1e6),  # no request finished: no latency
            "p50_ms": data["p50_us"] / 1000 if done else math.nan,
            "p99_ms": data["p99_us"] / 1000 if done else math.nan}


async def _stream_load(port: int, path: str, body: bytes, concurrency: int, seconds: float,
                       token: bytes) -> dict[str, float]:
    """Closed-loop streamed requests: time to the first chunk holding `token`, and to the end."""
    first: list[float] = []
    total: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                seen = None
                async with session.post(f"http://127.0.0.1:{port}{path}", data=body, headers=HEADERS) as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {await response.read()!r}")
                    tail = b""
                    async for chunk in response.content.iter_any():
                        if seen is None and token in tail + chunk:
                            seen = time.perf_counter()
                        tail = chunk[-64:]
                if seen is None:
                    raise RuntimeError("stream ended without a text token")
                first.append(seen - start)
                total.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"requests": len(total), "rps": len(total) / seconds,
            "ttft_p50_ms": statistics.median(first) * 1000, "total_p50_ms": statistics.median(total) * 1000}


def stream_load(port: int, path: str, body: bytes, concurrency: int, seconds: float, token: bytes) -> dict[str, float]:
    import uvloop

    return uvloop.run(_stream_load(port, path, body, concurrency, seconds, token))


# -- one target ---------------------------------------------------------------------------------


@dataclass
class Bodies:
    small: Path
    large: Path
    stream: bytes
    token: bytes


def anthropic_bodies(folder: Path) -> Bodies:
    small, large, stream = small_request(), large_request(), small_request()
    for body, is_stream in ((small, False), (large, False), (stream, True)):
        body["model"], body["stream"] = MODEL, is_stream
    (folder / "small.json").write_bytes(orjson.dumps(small))
    (folder / "large.json").write_bytes(orjson.dumps(large))
    return Bodies(folder / "small.json", folder / "large.json", orjson.dumps(stream), b'"text_delta"')


def openai_bodies(folder: Path, anthropic: Bodies) -> Bodies:
    """Same sizes, OpenAI-shaped: the upstream alone is sent what a proxy would send it."""
    def wrap(raw: bytes, is_stream: bool) -> bytes:
        return orjson.dumps({"model": "gpt-4.1", "stream": is_stream,
                             "messages": [{"role": "user", "content": raw.decode()}]})
    (folder / "small-openai.json").write_bytes(wrap(anthropic.small.read_bytes(), False))
    (folder / "large-openai.json").write_bytes(wrap(anthropic.large.read_bytes(), False))
    return Bodies(folder / "small-openai.json", folder / "large-openai.json", wrap(anthropic.stream, True),
                  b'"content":"')


SCENARIOS: list[tuple[str, Callable[[Target, Bodies, float], dict[str, float]]]] = [
    ("10k_c1", lambda t, b, s: wrk(t.port, t.path, b.small, 1, s)),
    ("10k_c32", lambda t, b, s: wrk(t.port, t.path, b.small, 32, s)),
    ("100k_c1", lambda t, b, s: wrk(t.port, t.path, b.large, 1, s)),
    ("100k_c32", lambda t, b, s: wrk(t.port, t.path, b.large, 32, s)),
    ("stream_c8", lambda t, b, s: stream_load(t.port, t.path, b.stream, 8, s, b.token)),
]


def measure(target: Target, bodies: Bodies, seconds: float, runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {"name": target.name}
    process = None
    if target.command is not None:
        log = RESULTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', target.name)}.log"
        started = time.perf_counter()
        with log.open("wb") as output:  # a pipe nobody reads would block a chatty server
            process = subprocess.Popen(["taskset", "-c", str(PROXY_CORE), *target.command],
                                       env={**os.environ, **target.env}, start_new_session=True,
                                       stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_first_answer(target.port, bodies.small.read_bytes(), process)
        except RuntimeError as exc:
            stop(process)
            raise RuntimeError(f"{target.name}: {exc}; its output: {log}") from None
        result["cold_start_s"] = time.perf_counter() - started
        time.sleep(2.0)
        result["idle_rss_mb"], result["idle_pss_mb"] = tree_memory_mb(process.pid)
        result["processes"] = len(tree_pids(process.pid))
    try:
        SCENARIOS[1][1](target, bodies, 2.0)  # warm-up (pools, caches)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in SCENARIOS}
        for _ in range(runs):
            for name, run in SCENARIOS:
                cpu_before = tree_cpu_seconds(process.pid) if process else 0.0
                row = run(target, bodies, seconds)
                if process:
                    spent = tree_cpu_seconds(process.pid) - cpu_before
                    row["cpu_ms_per_request"] = spent * 1000 / row["requests"] if row["requests"] else math.nan
                rounds[name].append(row)
        for name, rows in rounds.items():
            result[name] = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        if process:
            result["loaded_rss_mb"], _ = tree_memory_mb(process.pid)
    finally:
        if process:
            stop(process)
    return result


# -- report -------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    base = results[0]

    def added(result: dict[str, Any], scenario: str, key: str) -> str:
        return f"{result[scenario][key] - base[scenario][key]:+.2f}"

    rows = [
        "| | req/s c=32 10 KB | req/s c=1 | added p50 c=1 | added p99 c=1 | p50 / p99 c=32 | "
        "CPU / req c=32 | added p50 c=1 100 KB | req/s c=32 100 KB | stream c=8: TTFT added / total added | "
        "idle RSS (PSS) | cold start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        is_base = r is base
        rows.append(" | ".join([
            f"| {r['name']}", f"{r['10k_c32']['rps']:,.0f}", f"{r['10k_c1']['rps']:,.0f}",
            "(p50 " + f"{r['10k_c1']['p50_ms']:.2f})" if is_base else added(r, "10k_c1", "p50_ms") + " ms",
            "(p99 " + f"{r['10k_c1']['p99_ms']:.2f})" if is_base else added(r, "10k_c1", "p99_ms") + " ms",
            f"{r['10k_c32']['p50_ms']:.1f} / {r['10k_c32']['p99_ms']:.1f} ms",
            "" if is_base else f"{r['10k_c32']['cpu_ms_per_request']:.2f} ms",
            "(p50 " + f"{r['100k_c1']['p50_ms']:.2f})" if is_base else added(r, "100k_c1", "p50_ms") + " ms",
            f"{r['100k_c32']['rps']:,.0f}",
            (f"(TTFT {r['stream_c8']['ttft_p50_ms']:.2f} / {r['stream_c8']['total_p50_ms']:.2f})" if is_base else
             f"{added(r, 'stream_c8', 'ttft_p50_ms')} / {added(r, 'stream_c8', 'total_p50_ms')} ms"),
            "" if is_base else f"{r['idle_rss_mb']:.0f} ({r['idle_pss_mb']:.0f}) MB, {r['processes']} proc",
            "" if is_base else f"{r['cold_start_s']:.2f} s",
        ]) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="rounds per target; medians reported (default 3)")
    parser.add_argument("--compare", action="append", default=[], metavar="REF",
                        help="also serve engine/ of this git ref (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR",
                        help="also serve the ccproxy_engine package found in DIR (e.g. bench/wired_variant.py's)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="measure only targets whose name contains NAME (the upstream alone always runs)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    os.sched_setaffinity(0, {LOAD_CORE})  # this script, wrk and the fake upstream: core 0
    RESULTS.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="onecore-bodies-"))
    anthropic = anthropic_bodies(folder)
    openai = openai_bodies(folder, anthropic)
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "asgi", "--port", str(upstream_port), "--workers", "1",
         "--runtime-threads", "1", "--log-level", "error", "upstream:app"],
        cwd=BENCH, start_new_session=True)
    try:
        _wait_port(upstream_port)
        targets: list[Target | None] = [
            ccproxy_target("ccproxy-engine", upstream_port),
            *(ccproxy_target(f"ccproxy-engine@{ref}", upstream_port, extract_ref(ref)) for ref in args.compare),
            *(ccproxy_target(f"ccproxy-engine {name}", upstream_port, str(Path(folder).resolve()))
              for name, _, folder in (variant.partition("=") for variant in args.variant)),
            ccr_target(upstream_port), litellm_target(upstream_port),
        ]
        chosen = [t for t in targets if t and (not args.only or any(o in t.name for o in args.only))]
        floor = Target("upstream alone", None, path="/v1/chat/completions", is_openai=True, port=upstream_port)
        results = [measure(floor, openai, args.seconds, args.runs)]
        for target in chosen:
            print(f"measuring {target.name} ...", file=sys.stderr)
            try:
                results.append(measure(target, anthropic, args.seconds, args.runs))
            except (RuntimeError, subprocess.CalledProcessError) as exc:  # the others still get measured
                print(f"  {target.name} failed: {exc}", file=sys.stderr)
    finally:
        stop(upstream)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": sys.version.split()[0],
               "load_avg_at_end": os.getloadavg()}
    (RESULTS / f"onecore-{stamp}.json").write_text(json.dumps({"machine": machine, "args": vars(args),
                                                               "results": results}, indent=2))
    print(f"machine: {machine}; {args.runs} rounds x {args.seconds:g} s, medians; "
          f"json: bench/results/onecore-{stamp}.json\n")
    print(table(results))


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
