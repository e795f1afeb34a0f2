"""Ray and the actors of a :class:`~aprompt.executors.ray_executor.RayExecutor`: starting Ray (or joining
the cluster this process uses), starting the relay and the worker actors and waiting until they are ready,
and stopping them — Ray too, once no executor that started it uses it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.executors._ray_relay import _Relay, _WorkerActor

try:
    import ray
    import ray.exceptions
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    ray = None  # type: ignore[assignment]

__all__ = [
    "RayActors",
    "Worker",
    "gist",
    "kill_actors",
    "release_ray",
    "start_actors",
    "start_relay",
    "start_worker",
]


@attrs.define
class Worker:
    """A worker actor's handle and the program runs it runs now."""

    handle: Any
    busy: int = 0


@attrs.define
class RayActors:
    """What :func:`start_actors` started: the workers, the relay, and whether Ray counts this user."""

    workers: list[Worker]
    relay: Any
    started_ray: bool


@attrs.define
class _RayStarted:
    """Whether an executor of this process started Ray, and how many open executors use it."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    by_executor: bool = False
    users: int = 0


_STARTED_RAY = _RayStarted()


def start_actors(
    *,
    address: str | None,
    num_cpus: int | None,
    init_options: Mapping[str, Any],
    workers: int | None,
    worker_options: Mapping[str, Any],
    retries: int,
    runs_per_worker: int,
    ready_timeout: float,
) -> RayActors:
    """Start Ray unless this process uses a cluster already, then the relay and ``workers`` worker actors
    (default: one per CPU of the cluster), and wait until they answer.

    Raises:
        ConfigError: Ray refuses ``worker_options``, the workers cannot start (their ``runtime_env``, or
            aprompt not importable where they run) or do not start within ``ready_timeout``. What was
            started is stopped.
    """
    started_ray = _use_ray(address, num_cpus, init_options)
    started: list[Worker] = []
    relay: Any = None
    try:
        resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
        n = workers or max(1, int(resources.get("CPU", 1)))
        relay = start_relay()
        try:
            started = [Worker(start_worker(worker_options, retries, runs_per_worker)) for _ in range(n)]
        except (TypeError, ValueError) as exc:  # Ray checks the options here
            raise ConfigError(f"Ray refused worker_options: {exc}") from exc
        ready = [w.handle.pid.remote() for w in started] + [relay.ping.remote()]
        _, pending = ray.wait(ready, num_returns=len(ready), timeout=ready_timeout)
        if pending:
            raise ConfigError(
                f"{len(pending)} of {n} Ray workers did not start within {ready_timeout:g} s: the "
                f"cluster has {resources} and each worker asks for {_placement(worker_options)}"
            )
        try:
            ray.get(ready)
        except ray.exceptions.RayError as exc:
            # Its runtime_env could not be set up or aprompt cannot be imported where it runs: every
            # run would fail alike, so it is a setup fault now, not a lost run later.
            raise ConfigError(
                f"the Ray workers could not start ({type(exc).__name__}: {gist(exc)}); a worker "
                "needs aprompt installed on its node and a runtime_env Ray can set up"
            ) from exc
    except BaseException:
        kill_actors(started, relay)
        started, relay = [], None  # no handle outlives Ray
        if started_ray:
            release_ray()
        raise
    return RayActors(started, relay, started_ray)


def start_worker(worker_options: Mapping[str, Any], retries: int, runs_per_worker: int) -> Any:
    """A new worker actor (restarted by Ray when its process dies); its handle.

    Raises:
        TypeError, ValueError: Ray refused ``worker_options``.
    """
    options = {
        "max_restarts": -1,
        "max_task_retries": retries,
        "max_concurrency": runs_per_worker,
        **worker_options,
    }
    return ray.remote(_WorkerActor).options(**options).remote()


def start_relay() -> Any:
    """A new relay actor (the mailbox of every run's LM calls; it takes no CPU)."""
    return ray.remote(_Relay).options(num_cpus=0, max_concurrency=100_000).remote()


def _use_ray(address: str | None, num_cpus: int | None, init_options: Mapping[str, Any]) -> bool:
    """Start Ray unless this process uses it already; whether the caller must :func:`release_ray`."""
    with _STARTED_RAY.lock:
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                options["num_cpus"] = num_cpus
            else:
                options["address"] = address
            ray.init(**{**options, **init_options})
            _STARTED_RAY.by_executor = True
        # Ray that an executor started is shut down by the last executor using it, not the first.
        if _STARTED_RAY.by_executor:
            _STARTED_RAY.users += 1
            return True
    return False


def kill_actors(workers: list[Worker], relay: Any) -> None:
    """Kill the worker actors and the relay (``None``: none was started)."""
    for worker in workers:
        ray.kill(worker.handle)
    if relay is not None:
        ray.kill(relay)


def release_ray() -> None:
    """One executor stopped using the Ray an executor started: the last one shuts it down."""
    with _STARTED_RAY.lock:
        _STARTED_RAY.users -= 1
        if _STARTED_RAY.users == 0:
            _STARTED_RAY.by_executor = False
            ray.shutdown()


def _placement(options: Mapping[str, Any]) -> dict[str, Any]:
    """Actor options as an error shows them: without the ``runtime_env`` (its ``env_vars`` may hold keys)."""
    return {name: value for name, value in options.items() if name != "runtime_env"}


def gist(exc: BaseException, *, last: bool = True) -> str:
    """The first (and last) line of a Ray error's message (between them, a remote traceback)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    return " ... ".join(dict.fromkeys(lines[:1] + (lines[-1:] if last else [])))
