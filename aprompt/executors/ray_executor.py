"""Program runs on a Ray cluster (the optional extra ``aprompt[ray]``).

How it works (see ``docs/scaling.md`` for the why):

* The program is pickled once per executor (cloudpickle; functions and classes of importable modules go
  by reference, so a module-level program's workers import its module) with every LM object in it
  replaced by a :class:`~aprompt.executors.relay.RelayedLM` key, put in the object store, and loaded once
  per worker process.
* Each program run is one call of a worker actor (``workers`` async actors, ``runs_per_worker`` runs at
  once each) carrying the run's :class:`~aprompt.program.overrides.PromptState` — the prompts of every
  predictor by name — which the worker applies to its own copy, and the key of each predictor's own LM
  (that of the driver's predictor) and its sampling parameters, so a module-level predictor with ``lm=``
  calls the driver's client, as the driver's predictor is set now.
* Each LM call of a remote run goes to a relay actor; the evaluating task of the driver takes it from
  there, makes it with the driver's real client (limiter, cache, meter, usage) and puts the reply back.
* A worker process that dies is restarted by Ray and its runs are sent again (``retries``); a run is
  never scored from a lost attempt. A relay actor that dies is replaced, and the runs that used it are
  sent again on the new one (``retries`` too). Cancelling an evaluation cancels its actor calls.

This module is the executor; ``_ray_cluster`` starts and stops Ray and the actors, ``_ray_relay``
holds the actors themselves and the pickling of programs, and ``_ray_results`` awaits the actors' replies,
turning Ray's errors into aprompt's.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs

from aprompt._errors import ConfigError
from aprompt.executors._ray_cluster import (
    Worker,
    gist,
    kill_actors,
    release_ray,
    start_actors,
    start_relay,
    start_worker,
)
from aprompt.executors._ray_relay import RelayLost, dump_program
from aprompt.executors._ray_results import WorkerLostError, result
from aprompt.executors.base import ProgramOutcome, ProgramRun
from aprompt.executors.relay import LMRequest, LMTable, RelayedOutcome, RunRelay, predictor_settings
from aprompt.program.context import current_lm
from aprompt.program.discovery import named_predictors
from aprompt.program.predictor import Predict

try:
    import ray
    import ray.exceptions
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    ray = None  # type: ignore[assignment]

__all__ = ["RayExecutor", "WorkerLostError"]


@attrs.define
class _Shipped:
    key: str
    box: list[Any]  # [ObjectRef]: nested, so Ray passes the reference, not the (large) value
    predictors: list[tuple[str, Predict]]
    program: object  # kept alive: the cache is keyed by its id


class RayExecutor:
    """Runs program runs on a Ray cluster; LM calls stay with the driver's clients (see the module).

    Args:
        address: ``None`` starts a local cluster (stopped when the last executor using it closes),
            ``"auto"`` or ``"ray://host:10001"`` connects to an existing one (left running). A process that
            already called ``ray.init`` uses that cluster.
        workers: worker processes (actors); default: one per CPU of the cluster.
        num_cpus: CPUs of a local cluster (default: all of this machine).
        runs_per_worker: program runs one worker runs at once (they overlap while waiting for the LM).
        retries: times a run is sent again after its worker process died.
        worker_options: Ray actor options of each worker (default ``{"num_cpus": 1}``; e.g. ``num_gpus``,
            ``resources``, ``runtime_env``).
        init_options: more keyword arguments of ``ray.init`` (e.g. ``runtime_env``, ``object_store_memory``).
        ready_timeout: seconds to wait for the workers to start.

    Opening it raises :class:`~aprompt.ConfigError` when the workers cannot start (Ray refuses their
    options, their ``runtime_env`` cannot be set up, aprompt is not importable where they run) or do not
    start within ``ready_timeout``.

    Example::

        async with RayExecutor(address="auto") as executor:
            result = await aprompt.optimize(program, trainset, metric, lm=lm, executor=executor)
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        num_cpus: int | None = None,
        runs_per_worker: int = 4,
        retries: int = 3,
        worker_options: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
        ready_timeout: float = 120.0,
    ) -> None:
        if ray is None:
            raise ConfigError("RayExecutor needs Ray: pip install 'aprompt[ray]'")
        for name, value in (("workers", workers), ("num_cpus", num_cpus)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(runs_per_worker, int) or runs_per_worker < 1:
            raise ConfigError(f"runs_per_worker must be a positive int, got {runs_per_worker!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be an int >= 0, got {retries!r}")
        self.address = address
        self._n_workers = workers
        self._num_cpus = num_cpus
        self.runs_per_worker = runs_per_worker
        self.retries = retries
        self._worker_options = dict(worker_options or {"num_cpus": 1})
        self._init_options = dict(init_options or {})
        self._ready_timeout = ready_timeout
        self._started_ray = False
        self._workers: list[Worker] = []
        self._relay: Any = None
        self._relay_lock: anyio.Lock | None = None
        self._slots: anyio.CapacityLimiter | None = None
        self._lms = LMTable()
        self._shipped: dict[int, _Shipped] = {}
        self._ids = itertools.count()
        self._open_runs: set[int] = set()  # ids of the runs under way (at most one per worker slot)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> RayExecutor:
        await anyio.to_thread.run_sync(self._start)
        self._slots = anyio.CapacityLimiter(len(self._workers) * self.runs_per_worker)
        self._relay_lock = anyio.Lock()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stop)

    def _start(self) -> None:
        if self._workers:
            raise ConfigError("this RayExecutor is already open; create another one")
        actors = start_actors(
            address=self.address,
            num_cpus=self._num_cpus,
            init_options=self._init_options,
            workers=self._n_workers,
            worker_options=self._worker_options,
            retries=self.retries,
            runs_per_worker=self.runs_per_worker,
            ready_timeout=self._ready_timeout,
        )
        self._workers, self._relay, self._started_ray = actors.workers, actors.relay, actors.started_ray

    def _stop(self) -> None:
        kill_actors(self._workers, self._relay)
        self._workers, self._relay = [], None
        self._shipped.clear()
        if self._started_ray:
            self._started_ray = False
            release_ray()

    def worker_pids(self) -> list[int]:
        """The process id of each worker (its current process: a dead one is replaced)."""
        return [int(pid) for pid in ray.get([w.handle.pid.remote() for w in self._require_open()])]

    def _require_open(self) -> list[Worker]:
        if not self._workers:
            raise ConfigError("RayExecutor is not open: use it as `async with RayExecutor(...) as executor:`")
        return self._workers

    # -- program runs ------------------------------------------------------------------------------
    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        """Run ``program`` on a worker (see :class:`~aprompt.executors.base.Executor`).

        Raises:
            WorkerLostError: the run's worker died more than ``retries`` times.
            ConfigError: the program, the run or its result cannot be pickled, the program or the run
                cannot be loaded on a worker, or it calls an LM the driver does not hold (see
                :func:`~aprompt.executors.relay.run_relayed`).
        """
        workers = self._require_open()
        assert self._slots is not None
        shipped = self._ship(program)
        # No lm= given: the run's default is that of the evaluating task's use_lm() block, as in-process.
        default_lm = run.lm if run.lm is not None else current_lm()
        remote = attrs.evolve(
            run,
            state=run.state.completed(shipped.predictors),
            lm=self._lms.stand_in(default_lm) if default_lm is not None else None,
        )
        # Read per run, like the prompts: the LM and sampling parameters each driver's predictor holds now.
        own_lms = self._lms.own_lms(shipped.predictors)
        settings = predictor_settings(shipped.predictors)
        relay = RunRelay(self._lms)
        async with self._slots:
            run_id = next(self._ids)  # taken with a slot: ids open in order, so the relay can forget old ones
            self._open_runs.add(run_id)
            worker = min(workers, key=lambda w: w.busy)
            worker.busy += 1
            try:
                for attempt in itertools.count(1):
                    relay_actor = self._relay
                    try:
                        relayed = await self._attempt(
                            worker, relay_actor, relay, run_id, run, shipped, remote, own_lms, settings
                        )
                        break
                    except RelayLost:
                        # Its LM calls failed for no fault of the program: a new relay serves this run's
                        # next attempt and every later run (the LM calls made stay counted).
                        await self._replace_relay(relay_actor)
                        if attempt > self.retries:
                            raise WorkerLostError(
                                f"the program run of example {run.example_id!r} was lost: the Ray actor "
                                f"relaying its LM calls died {attempt} time(s) (retries={self.retries}); it "
                                "is replaced, so calling again with this executor (and the same run_dir) "
                                "resumes"
                            ) from None
            except WorkerLostError:
                await self._replace_if_dead(worker)
                raise
            finally:
                worker.busy -= 1
                self._open_runs.discard(run_id)
        return relay.outcome(relayed, dict(shipped.predictors))

    async def _attempt(
        self,
        worker: Worker,
        relay_actor: Any,
        relay: RunRelay,
        run_id: int,
        run: ProgramRun,
        shipped: _Shipped,
        remote: ProgramRun,
        own_lms: Mapping[str, Any],
        settings: Mapping[str, Any],
    ) -> RelayedOutcome:
        """One attempt of a run on ``worker``, its LM calls served through ``relay_actor``.

        Raises:
            RelayLost: the relay actor died: the attempt is void, whatever the program made of it.
        """
        try:
            ref = worker.handle.run.remote(
                shipped.box, shipped.key, relay_actor, run_id, remote, own_lms, settings
            )
        except TypeError as exc:  # Ray pickles the run here
            raise ConfigError(
                f"the program run of example {run.example_id!r} cannot be sent to a Ray worker: its "
                f"inputs or demos cannot be pickled ({gist(exc, last=False):.300})"
            ) from exc
        except ray.exceptions.PendingCallsLimitExceeded as exc:  # every run beyond that limit alike
            raise ConfigError(
                f"a Ray worker refused the program run of example {run.example_id!r} ({gist(exc)}): "
                f"a worker is sent up to runs_per_worker={self.runs_per_worker} runs at once, more than "
                "worker_options' max_pending_calls allows: leave that option out"
            ) from exc
        relayed: RelayedOutcome | None = None
        lost = False
        worker_lost: WorkerLostError | None = None

        async def serve() -> None:
            nonlocal lost
            try:
                await self._serve(relay_actor, relay, run_id, group)
            except RelayLost:
                lost = True
                group.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(serve)
                try:
                    relayed = await result(ref, program_run=run.example_id)
                except RelayLost:
                    lost = True
                except WorkerLostError as exc:
                    worker_lost = exc  # raised as itself, not in the group's ExceptionGroup
                group.cancel_scope.cancel()
        except BaseException:
            ray.cancel(ref)  # frees the worker: this run was cancelled, or a sibling failed
            raise
        finally:
            relay_actor.close.remote(run_id, min(self._open_runs))
        if worker_lost is not None:
            raise worker_lost
        if lost or relayed is None:
            ray.cancel(ref)
            raise RelayLost("the relay actor died")
        return relayed

    async def _replace_relay(self, dead: Any) -> None:
        """Start a relay in place of ``dead`` (unless a sibling run did already).

        Raises:
            WorkerLostError: the new relay did not start (the cluster went away).
        """
        assert self._relay_lock is not None
        async with self._relay_lock:
            if self._relay is not dead:
                return
            fresh = start_relay()
            try:
                await result(fresh.ping.remote())
            except BaseException as exc:
                ray.kill(fresh)  # cancelled or failed while it starts: it must not outlive this call
                if isinstance(exc, RelayLost):
                    raise WorkerLostError(
                        "the Ray actor relaying the runs' LM calls died and a new one could not start (the "
                        f"cluster went away?): {exc}"
                    ) from None
                raise
            ray.kill(dead)
            self._relay = fresh

    async def _replace_if_dead(self, worker: Worker) -> None:
        """Start a worker actor in place of ``worker`` if it is dead for good (killed, or out of restarts),
        so that calling again with this executor resumes; one Ray restarts (or is busy) is left as it is."""
        dead = worker.handle
        with anyio.move_on_after(10, shield=True):  # done even as the evaluation stops on this error
            try:
                await result(dead.pid.remote(), program_run="(a check of its worker)")
            except WorkerLostError:
                if worker.handle is dead:  # not replaced by a sibling run that found it dead too
                    worker.handle = start_worker(self._worker_options, self.retries, self.runs_per_worker)
                    ray.kill(dead)

    async def _serve(
        self, relay_actor: Any, relay: RunRelay, run_id: int, group: anyio.abc.TaskGroup
    ) -> None:
        """Take the run's LM requests from the relay actor and answer each in its own task."""
        while True:
            requests: list[tuple[int, LMRequest]] = await result(relay_actor.take.remote(run_id, 5.0))
            for request_id, request in requests:
                group.start_soon(self._answer, relay_actor, relay, request_id, request)

    async def _answer(self, relay_actor: Any, relay: RunRelay, request_id: int, request: LMRequest) -> None:
        reply = await relay.answer(request)
        relay_actor.answer.remote(request_id, reply)

    def _ship(self, program: object) -> _Shipped:
        shipped = self._shipped.get(id(program))
        if shipped is None:
            try:
                data = dump_program(program, self._lms)
            except Exception as exc:
                raise ConfigError(
                    f"the program cannot be pickled for the Ray workers ({type(exc).__name__}: {exc}); keep "
                    "what cannot be pickled (locks, open files, connections) out of it: create it in a "
                    "module the workers import, or on first use"
                ) from exc
            key = f"{os.getpid()}-{id(self)}-{len(self._shipped)}"
            shipped = _Shipped(key, [ray.put(data)], named_predictors(program), program)
            self._shipped[id(program)] = shipped
        return shipped

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, workers={len(self._workers) or self._n_workers})"
