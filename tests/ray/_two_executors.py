"""Run as a script (a process where Ray is not started yet): two executors share the Ray the first one
started, and closing the first leaves the second working. Prints ``ok`` and each stage's outcome."""

from __future__ import annotations

import anyio
import ray

from aprompt.executors import RayExecutor


async def main() -> None:
    first = RayExecutor(workers=1, num_cpus=2)
    await first.__aenter__()
    async with RayExecutor(workers=1) as second:
        await first.__aexit__(None, None, None)
        assert ray.is_initialized(), "closing the first executor shut down the Ray the second uses"
        assert len(second.worker_pids()) == 1
    assert not ray.is_initialized(), "the last executor left the Ray it started running"
    print("ok")


anyio.run(main)
