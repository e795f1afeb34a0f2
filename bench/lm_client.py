"""Throughput and client CPU per call of OpenAICompatibleLM, against a fake server in a subprocess.

The fake OpenAI-compatible server runs in its own process (``python -m
aprompt.testing.fake_openai``) with a fixed answer latency, so its CPU does not count as the
client's. Each scenario fires all calls at once through one client capped at ``--concurrency``;
wall time and this process's CPU time (``time.process_time``) give calls/s and CPU ms per call;
the median of ``--repeats`` runs is shown.

Scenarios: distinct prompts over HTTP (no cache); the same prompts from a warm cache (memory hits);
and from a fresh cache object on the same SQLite file (disk hits).

    .venv/bin/python bench/lm_client.py            # 5,000 calls, 256 concurrent, median of 3
    .venv/bin/python bench/lm_client.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from aprompt.lm.cache import ResponseCache
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Message

API_KEY = "sk-bench-not-a-secret"
RESULTS = Path(__file__).parent / "results" / "lm_client.md"


@contextmanager
def server_process(latency_ms: float) -> Iterator[tuple[str, int]]:
    """Run the fake server in a subprocess; yield its base URL and pid."""
    command = [sys.executable, "-m", "aprompt.testing.fake_openai"]
    command += ["--latency-ms", str(latency_ms), "--api-key", API_KEY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"fake server did not start: {base_url!r}")
        yield base_url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of another process, from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prompts(count: int, offset: int = 0) -> list[list[Message]]:
    return [
        [Message(role="user", content=f"Question {offset + i}: how many legs has a spider?")]
        for i in range(count)
    ]


async def fire(lm: OpenAICompatibleLM, batch: list[list[Message]]) -> None:
    async with anyio.create_task_group() as tg:
        for messages in batch:
            tg.start_soon(lm.chat, messages)


class Measurement:
    """One timed run: wall seconds, client CPU seconds, server CPU seconds (if known)."""

    def __init__(self, calls: int, wall: float, cpu: float, server_cpu: float | None) -> None:
        self.calls, self.wall, self.cpu, self.server_cpu = calls, wall, cpu, server_cpu


async def measure(
    make_lm: Callable[[], OpenAICompatibleLM],
    batch: list[list[Message]],
    server_pid: int,
    *,
    warm_up: list[list[Message]] | None = None,
) -> Measurement:
    async with make_lm() as lm:
        if warm_up:
            await fire(lm, warm_up)  # opens the pooled connections; not timed
        server_before = process_cpu_seconds(server_pid)
        cpu, wall = time.process_time(), time.perf_counter()
        await fire(lm, batch)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_after = process_cpu_seconds(server_pid)
        if lm.usage.calls < len(batch) + len(warm_up or []):
            raise RuntimeError(f"calls failed: {lm.usage}")
    server = None if server_before is None or server_after is None else server_after - server_before
    return Measurement(len(batch), wall, cpu, server)


def row(name: str, runs: list[Measurement]) -> str:
    wall = statistics.median(m.wall for m in runs)
    cpu = statistics.median(m.cpu for m in runs)
    calls = runs[0].calls
    servers = [m.server_cpu for m in runs if m.server_cpu is not None]
    server = f"{statistics.median(servers) / calls * 1e3:.3f}" if servers else "n/a"
    return f"| {name} | {calls:,} | {wall:.2f} | {calls / wall:,.0f} | {cpu / calls * 1e3:.3f} | {server} |"


async def run(args: argparse.Namespace, base_url: str, server_pid: int) -> list[str]:
    def client(cache: ResponseCache | None = None) -> OpenAICompatibleLM:
        return OpenAICompatibleLM(
            "bench-model",
            base_url,
            api_key=API_KEY,
            max_concurrency=args.concurrency,
            cache=cache,
        )

    warm_up = prompts(args.concurrency, offset=10_000_000)
    http_runs, memory_runs, disk_runs = [], [], []
    for repeat in range(args.repeats):
        batch = prompts(args.calls, offset=repeat * args.calls)
        http_runs.append(await measure(client, batch, server_pid, warm_up=warm_up))
        with tempfile.TemporaryDirectory() as directory:
            with ResponseCache.in_directory(directory, max_entries=args.calls) as cache:
                await measure(lambda: client(cache), batch, server_pid)  # fills the cache
                memory_runs.append(await measure(lambda: client(cache), batch, server_pid))
            with ResponseCache.in_directory(directory, max_entries=args.calls) as cache:
                disk_runs.append(await measure(lambda: client(cache), batch, server_pid))
    return [
        row("HTTP, no cache", http_runs),
        row("warm cache, memory hits", memory_runs),
        row("warm cache, disk hits", disk_runs),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--quick", action="store_true", help="1,000 calls, one repeat")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.repeats = 1000, 1
    command = shlex.join(["python", *sys.argv])
    header = [
        f"command: `{command}`",
        "",
        f"Fake server in a separate process, {args.latency_ms:g} ms latency; one client, "
        f"max_concurrency={args.concurrency}, all calls fired at once; {args.backend}; "
        f"median of {args.repeats}. Ideal HTTP throughput: "
        f"{args.concurrency / (args.latency_ms / 1000):,.0f} calls/s. "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        "| scenario | calls | wall s | calls/s | client CPU ms/call | server CPU ms/call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header[:2]), flush=True)
    with server_process(args.latency_ms) as (base_url, pid):
        rows = anyio.run(run, args, base_url, pid, backend=args.backend)
    report = "\n".join([*header, *rows]) + "\n"
    print("\n".join(header[2:] + rows))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# LM client benchmark\n\n" + report)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
