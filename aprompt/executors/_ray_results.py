"""Awaiting the replies of the actors of a :class:`~aprompt.executors.ray_executor.RayExecutor` on any
anyio backend, with Ray's errors for a lost run, worker or relay made aprompt's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
import sniffio

from aprompt._errors import ConfigError, OptimizationError
from aprompt.executors._ray_cluster import gist
from aprompt.executors._ray_relay import RelayLost

try:
    import ray
    import ray.exceptions
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    ray = None  # type: ignore[assignment]

__all__ = ["WorkerLostError", "result", "threadsafe"]


class WorkerLostError(OptimizationError):
    """A program run was lost: the Ray worker running it, or the relay actor carrying its LM calls, died
    more often than ``retries`` allows (or the cluster went away). The run is never scored; with a
    ``run_dir``, calling again (with this executor, or a new one) resumes."""


#: Ray's errors for a run lost with its worker (killed, out of memory), its node or a stored object it
#: needed: what the docs promise as :class:`WorkerLostError`, never Ray's own error.
_LOST: tuple[type[BaseException], ...] = (
    (
        ray.exceptions.RayActorError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.OutOfMemoryError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.LocalRayletDiedError,
        ray.exceptions.ObjectLostError,
    )
    if ray is not None
    else ()
)


async def result(ref: Any, *, program_run: str | None = None) -> Any:
    """Await a Ray object reference on any anyio backend (Ray's own ``await ref`` needs asyncio)."""
    future = ref.future()
    done = anyio.Event()
    wake = threadsafe(done.set)
    future.add_done_callback(lambda _: wake())
    await done.wait()
    try:
        return future.result()
    except _LOST as exc:
        if program_run is None:  # a call of the relay actor
            raise RelayLost(f"the relay actor died ({type(exc).__name__})") from exc
        raise WorkerLostError(
            f"the program run of example {program_run!r} was lost: its Ray worker, node or stored object "
            f"died ({type(exc).__name__})"
        ) from exc
    except ray.exceptions.RayTaskError as exc:
        if program_run is None:
            raise
        if isinstance(exc.cause, RelayLost):  # the worker found the relay dead: the attempt is void
            raise RelayLost(str(exc.cause)) from exc
        # The worker could not take the run (its inputs or demos name a module it cannot import): every
        # run like it fails alike, a setup fault, not Ray's own error.
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        raise ConfigError(
            f"the program run of example {program_run!r} could not be loaded on a Ray worker "
            f"({gist(cause)}); its inputs and demos must load where it runs: make the modules of their "
            "types importable on every node (install them, or pass "
            "init_options={'runtime_env': {'working_dir': ...}})"
        ) from exc


def threadsafe(action: Callable[[], None]) -> Callable[[], None]:
    """``action`` made callable from any thread: it runs soon in this task's event loop."""
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def trio_wake() -> None:
            try:
                token.run_sync_soon(action)
            except trio.RunFinishedError:
                pass

        return trio_wake
    loop = asyncio.get_running_loop()

    def asyncio_wake() -> None:
        try:
            loop.call_soon_threadsafe(action)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    return asyncio_wake
