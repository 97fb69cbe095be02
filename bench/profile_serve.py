"""Where the served proxy's one core goes under load: per-thread CPU and a py-spy profile.

    .venv/bin/pip install py-spy          # into your venv only; not a project dependency
    .venv/bin/python bench/profile_serve.py [--seconds 20] [--concurrency 32] [--size 10|100] [--stream]

Same layout as bench/onecore.py: ``ccproxy-engine serve`` alone on core 1, the fake upstream and wrk
on core 0. While wrk runs, py-spy samples the server's worker process (every Python thread,
``--nonblocking`` so sampling does not pause it), and /proc gives each thread's CPU time, which
tells the Python event loop apart from granian's Rust threads and the token-counting thread pool.
Prints the CPU split by thread and the functions ranked by samples: "self" (the function itself on
top of the stack) and "inclusive" (anywhere on the stack); the raw collapsed stacks go to
bench/results/profile-<time>.txt for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onecore import (
    BENCH,
    CLK_TCK,
    LOAD_CORE,
    PROXY_CORE,
    RESULTS,
    _wait_port,
    anthropic_bodies,
    ccproxy_target,
    free_port,
    stop,
    tree_pids,
    wait_first_answer,
)

PY_SPY = Path(sys.executable).parent / "py-spy"


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed) over the given processes."""
    totals: dict[str, float] = collections.defaultdict(float)
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as comm, open(f"/proc/{pid}/task/{tid}/stat") as stat:
                    name = re.sub(r"[-_]?\d+$", "", comm.read().strip()) or "?"
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            role = "main" if tid == str(pid) else name
            totals[f"pid {pid} {role}"] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return totals


def rank(raw: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed (raw) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")[1:]]  # drop the thread frame
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples in Python threads", "", "self (top of stack):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive (anywhere on the stack):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


#: (category, test on "function (file)") in order; the first that matches a sample's top frame wins.
#: A Python frame that awaits native code (granian's send/receive, the uvloop run loop) is on top of
#: the stack while that native code runs, so those frames stand for it.
CATEGORIES: list[tuple[str, Callable[[str, str], bool]]] = [
    ("granian: response out (native, under Litestar's send)",
     lambda fn, f: "capture_response_started" in fn or fn.startswith("ASGIResponse.send_body")),
    ("granian: request body in (native, under Request.stream)", lambda fn, f: fn.startswith("Request.stream")),
    ("event loop itself (uvloop: polling, callbacks)", lambda fn, f: "_spawn_asgi_lifespan_worker" in fn
     or fn.startswith(("serve (granian", "Runner.run"))),
    ("request schema check", lambda fn, f: f.startswith("<string>") or "fastjsonschema" in f
     or "engine/_fastcheck" in f or "engine/_validation" in f),
    ("rules: request chain (templates, expressions, Jinja filters, functions)",
     lambda fn, f: any(m in f for m in ("engine/_template", "engine/_expressions", "engine/_compiler",
                                         "engine/_functions", "jinja2", "jmespath"))),
    ("httpx layer", lambda fn, f: "httpx" in f),
    ("aiohttp client", lambda fn, f: "aiohttp" in f),
    ("Litestar", lambda fn, f: "litestar" in f),
    ("token counting", lambda fn, f: "engine/_tokens" in f or "tiktoken" in f),
    ("answer and stream translation", lambda fn, f: any(m in f for m in ("engine/_stream", "engine/_sse",
                                                                          "engine/_translate"))),
    ("engine: app, router, upstream client", lambda fn, f: "engine/" in f),
    ("asyncio, threads", lambda fn, f: any(m in f for m in ("asyncio", "concurrent", "threading", "uvloop"))),
]


def categories(raw: Path) -> str:
    """Self samples grouped by what the top frame belongs to, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")[1:]
        if not frames:
            continue
        total += int(count_text)
        function, _, where = frames[-1].partition(" (")
        counts[next((name for name, test in CATEGORIES if test(function, where)), "other")] += int(count_text)
    return "\n".join(f"  {n / total:6.1%}  {name}" for name, n in counts.most_common())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--size", choices=["10", "100"], default="10")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--variant", metavar="DIR", help="profile the ccproxy_engine package in DIR instead")
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    RESULTS.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="profile-bodies-"))
    bodies = anthropic_bodies(folder)
    body_file = bodies.small if args.size == "10" else bodies.large
    if args.stream:
        stream = orjson.loads(body_file.read_bytes())
        stream["stream"] = True
        body_file = folder / "stream.json"
        body_file.write_bytes(orjson.dumps(stream))
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "asgi", "--port", str(upstream_port), "--workers", "1",
         "--runtime-threads", "1", "--log-level", "error", "upstream:app"], cwd=BENCH, start_new_session=True)
    target = ccproxy_target("ccproxy-engine", upstream_port,
                            str(Path(args.variant).resolve()) if args.variant else None)
    assert target.command is not None
    proxy = subprocess.Popen(["taskset", "-c", str(PROXY_CORE), *target.command], start_new_session=True,
                             env={**os.environ, **target.env}, stderr=subprocess.DEVNULL)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = RESULTS / f"profile-{stamp}.txt"
    try:
        _wait_port(upstream_port)
        wait_first_answer(target.port, bodies.small.read_bytes(), proxy)
        pids = tree_pids(proxy.pid)
        worker = pids[-1]  # the process that runs the app (granian's worker, or the one process)
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.concurrency}", f"-d{args.seconds + 4}s", "--timeout", "30s",
             "-s", str(BENCH / "wrk_post.lua"), f"http://127.0.0.1:{target.port}/v1/messages"],
            env={**os.environ, "BENCH_BODY": str(body_file)}, stdout=subprocess.PIPE, text=True)
        time.sleep(2)  # past the warm-up
        before = thread_cpu(pids)
        spy = threading.Thread(target=subprocess.run, args=([
            str(PY_SPY), "record", "--pid", str(worker), "--duration", str(args.seconds), "--rate", str(args.rate),
            "--format", "raw", "--nonblocking", "--threads", "--output", str(raw)],),
            kwargs={"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True})
        spy.start()
        spy.join()
        after = thread_cpu(pids)
        out, _ = wrk.communicate()
    finally:
        stop(proxy)
        stop(upstream)
    print(next(line for line in out.splitlines() if line.startswith("WRKJSON")))
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    busy = sum(spent.values())
    print(f"\nCPU of the proxy's process tree during {args.seconds} s of load: {busy:.2f} s "
          f"({busy / args.seconds:.0%} of its core)")
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"  {seconds / busy:6.1%}  {name}")
    print(f"\nPython-thread samples by category (top frame):\n{categories(raw)}")
    print(f"\n{rank(raw, args.top)}\n\nraw stacks: {raw}")


if __name__ == "__main__":
    main()
