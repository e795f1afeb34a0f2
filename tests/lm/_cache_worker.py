"""A second process for tests/lm/test_cache.py: writes and reads a shared SQLite cache file.

python _cache_worker.py write DIR PREFIX COUNT      store COUNT entries "PREFIX-i"
python _cache_worker.py read DIR PREFIX COUNT       print [text, cached] per entry (null if absent)
python _cache_worker.py stress DIR WHO OTHER COUNT SHARED START_FILE
    announce readiness (DIR/WHO.ready), wait for START_FILE, then with 16 tasks store COUNT own
    entries and SHARED shared ones while reading the OTHER process's entries; print a summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel

from aprompt.lm.cache import ResponseCache, SQLiteCache, request_key
from aprompt.lm.types import Completion, TokenUsage


def key_of(name: str) -> str:
    return request_key(model="m", messages=[{"role": "user", "content": name}], params={})


async def store(cache: ResponseCache, name: str, text: str) -> Completion:
    async def compute() -> Completion:
        await anyio.lowlevel.checkpoint()
        return Completion(text, TokenUsage(3, 4), "m", "stop")

    completion, _ = await cache.get_or_compute(key_of(name), compute)
    return completion


async def write(directory: str, prefix: str, count: int) -> None:
    with ResponseCache.in_directory(directory) as cache:
        for i in range(count):
            await store(cache, f"{prefix}-{i}", f"{prefix}-{i}")


def read(directory: str, prefix: str, count: int) -> None:
    with ResponseCache.in_directory(directory) as cache:
        disk = cache.disk
        assert disk is not None
        found = [disk.get(key_of(f"{prefix}-{i}")) for i in range(count)]
    print(json.dumps([None if c is None else [c.text, c.cached] for c in found]))


async def stress(directory: str, who: str, other: str, count: int, shared: int) -> None:
    # Disk only, so every read and every write goes to the shared file.
    path = Path(directory) / "lm-cache.sqlite3"
    cache = ResponseCache(None, SQLiteCache(path))
    disk = cache.disk
    assert disk is not None
    names = [(f"{who}-{i}", f"{who}-{i}") for i in range(count)]
    names += [(f"shared-{i}", f"shared-{i}-by-{who}") for i in range(shared)]
    seen_from_other = 0
    began = time.time()

    async def worker(offset: int) -> None:
        nonlocal seen_from_other
        for n, (name, text) in enumerate(names[offset::16]):
            await store(cache, name, text)
            if disk.get(key_of(f"{other}-{(offset * 31 + n) % count}")) is not None:
                seen_from_other += 1

    async with anyio.create_task_group() as tg:
        for offset in range(16):
            tg.start_soon(worker, offset)
    cache.close()
    summary = {"stored": len(names), "seen_from_other": seen_from_other}
    print(json.dumps({**summary, "began": began, "ended": time.time()}))


def main(argv: list[str]) -> None:
    command, directory, *rest = argv
    if command == "write":
        anyio.run(write, directory, rest[0], int(rest[1]))
    elif command == "read":
        read(directory, rest[0], int(rest[1]))
    elif command == "stress":
        who, other, count, shared, start = rest
        (Path(directory) / f"{who}.ready").touch()
        while not Path(start).exists():  # start together with the other process
            time.sleep(0.001)
        anyio.run(stress, directory, who, other, int(count), int(shared))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
