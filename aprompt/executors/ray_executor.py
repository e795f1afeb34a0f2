"""Program runs on a Ray cluster (the optional extra ``aprompt[ray]``).

How it works (see ``docs/scaling.md`` for the why):

* The program is pickled once per executor (cloudpickle; functions and classes of importable modules go
  by reference, so a module-level program's workers import its module) with every LM object in it
  replaced by a :class:`~aprompt.executors.relay.RelayedLM` key, put in the object store, and loaded once
  per worker process.
* Each program run is one call of a worker actor (``workers`` async actors, ``runs_per_worker`` runs at
  once each) carrying the run's :class:`~aprompt.program.overrides.PromptState` — the prompts of every
  predictor by name — which the worker applies to its own copy, and the key of each predictor's own LM
  (that of the driver's predictor), so a module-level predictor with ``lm=`` calls the driver's client.
* Each LM call of a remote run goes to a relay actor; the evaluating task of the driver takes it from
  there, makes it with the driver's real client (limiter, cache, meter, usage) and puts the reply back.
* A worker process that dies is restarted by Ray and its runs are sent again (``retries``); a run is
  never scored from a lost attempt. Cancelling an evaluation cancels its actor calls.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs
import sniffio

from aprompt._errors import ConfigError, OptimizationError
from aprompt.executors.base import ProgramOutcome, ProgramRun
from aprompt.executors.relay import (
    LMReply,
    LMRequest,
    LMTable,
    RelayedLM,
    RelayedOutcome,
    RunRelay,
    run_relayed,
)
from aprompt.lm.types import LM
from aprompt.program.context import current_lm
from aprompt.program.discovery import named_predictors
from aprompt.program.predictor import Predict

try:
    import ray
    import ray.cloudpickle
    import ray.exceptions
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    ray = None  # type: ignore[assignment]

__all__ = ["RayExecutor", "WorkerLostError"]

_LM_TAG = "aprompt-lm"


class WorkerLostError(OptimizationError):
    """A program run was lost: the Ray worker running it died more often than ``retries`` allows (or
    the cluster went away). The run is never scored; with a ``run_dir``, calling again resumes."""


@attrs.define
class _Worker:
    handle: Any
    busy: int = 0


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
        self._workers: list[_Worker] = []
        self._relay: Any = None
        self._slots: anyio.CapacityLimiter | None = None
        self._lms = LMTable()
        self._shipped: dict[int, _Shipped] = {}
        self._ids = itertools.count()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> RayExecutor:
        await anyio.to_thread.run_sync(self._start)
        self._slots = anyio.CapacityLimiter(len(self._workers) * self.runs_per_worker)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stop)

    def _start(self) -> None:
        if self._workers:
            raise ConfigError("this RayExecutor is already open; create another one")
        with _STARTED_RAY.lock:
            if not ray.is_initialized():
                options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
                if self.address is None:
                    options["num_cpus"] = self._num_cpus
                else:
                    options["address"] = self.address
                ray.init(**{**options, **self._init_options})
                _STARTED_RAY.by_executor = True
            # Ray that an executor started is shut down by the last executor using it, not the first.
            if _STARTED_RAY.by_executor:
                _STARTED_RAY.users += 1
                self._started_ray = True
        try:
            resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
            n = self._n_workers or max(1, int(resources.get("CPU", 1)))
            self._relay = ray.remote(_Relay).options(num_cpus=0, max_concurrency=100_000).remote()
            worker_class = ray.remote(_WorkerActor)
            options = {
                "max_restarts": -1,
                "max_task_retries": self.retries,
                "max_concurrency": self.runs_per_worker,
                **self._worker_options,
            }
            try:
                self._workers = [_Worker(worker_class.options(**options).remote()) for _ in range(n)]
            except (TypeError, ValueError) as exc:  # Ray checks the options here
                raise ConfigError(f"Ray refused worker_options: {exc}") from exc
            ready = [w.handle.pid.remote() for w in self._workers] + [self._relay.ping.remote()]
            _, pending = ray.wait(ready, num_returns=len(ready), timeout=self._ready_timeout)
            if pending:
                raise ConfigError(
                    f"{len(pending)} of {n} Ray workers did not start within {self._ready_timeout:g} s: the "
                    f"cluster has {resources} and each worker asks for {_placement(self._worker_options)}"
                )
            try:
                ray.get(ready)
            except ray.exceptions.RayError as exc:
                # Its runtime_env could not be set up or aprompt cannot be imported where it runs: every
                # run would fail alike, so it is a setup fault now, not a lost run later.
                raise ConfigError(
                    f"the Ray workers could not start ({type(exc).__name__}: {_gist(exc)}); a worker "
                    "needs aprompt installed on its node and a runtime_env Ray can set up"
                ) from exc
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> None:
        for worker in self._workers:
            ray.kill(worker.handle)
        if self._relay is not None:
            ray.kill(self._relay)
        self._workers, self._relay = [], None
        self._shipped.clear()
        if self._started_ray:
            self._started_ray = False
            with _STARTED_RAY.lock:
                _STARTED_RAY.users -= 1
                if _STARTED_RAY.users == 0:
                    _STARTED_RAY.by_executor = False
                    ray.shutdown()

    def worker_pids(self) -> list[int]:
        """The process id of each worker (its current process: a dead one is replaced)."""
        return [int(pid) for pid in ray.get([w.handle.pid.remote() for w in self._require_open()])]

    def _require_open(self) -> list[_Worker]:
        if not self._workers:
            raise ConfigError("RayExecutor is not open: use it as `async with RayExecutor(...) as executor:`")
        return self._workers

    # -- program runs ------------------------------------------------------------------------------
    async def run_program(self, program: object, run: ProgramRun) -> ProgramOutcome:
        """Run ``program`` on a worker (see :class:`~aprompt.executors.base.Executor`).

        Raises:
            WorkerLostError: the run's worker died more than ``retries`` times.
            ConfigError: the program, the run or its result cannot be pickled, the program cannot be
                loaded on a worker, or it calls an LM the driver does not hold (see
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
        # Read per run, like the prompts: the LM each driver's predictor holds now.
        own_lms = self._lms.own_lms(shipped.predictors)
        relay = RunRelay(self._lms)
        run_id = next(self._ids)
        async with self._slots:
            worker = min(workers, key=lambda w: w.busy)
            try:
                ref = worker.handle.run.remote(shipped.box, shipped.key, self._relay, run_id, remote, own_lms)
            except TypeError as exc:  # Ray pickles the run here
                raise ConfigError(
                    f"the program run of example {run.example_id!r} cannot be sent to a Ray worker: its "
                    f"inputs or demos cannot be pickled ({_gist(exc, last=False):.300})"
                ) from exc
            worker.busy += 1
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._serve, relay, run_id, group)
                    relayed = await _result(ref, program_run=run.example_id)
                    group.cancel_scope.cancel()
            except BaseException:
                ray.cancel(ref)  # frees the worker: this run was cancelled, or a sibling failed
                raise
            finally:
                worker.busy -= 1
                self._relay.close.remote(run_id)
        return relay.outcome(relayed, dict(shipped.predictors))

    async def _serve(self, relay: RunRelay, run_id: int, group: anyio.abc.TaskGroup) -> None:
        """Take the run's LM requests from the relay actor and answer each in its own task."""
        while True:
            requests: list[tuple[int, LMRequest]] = await _result(self._relay.take.remote(run_id, 5.0))
            for request_id, request in requests:
                group.start_soon(self._answer, relay, request_id, request)

    async def _answer(self, relay: RunRelay, request_id: int, request: LMRequest) -> None:
        reply = await relay.answer(request)
        self._relay.answer.remote(request_id, reply)

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


async def _result(ref: Any, *, program_run: str | None = None) -> Any:
    """Await a Ray object reference on any anyio backend (Ray's own ``await ref`` needs asyncio)."""
    future = ref.future()
    done = anyio.Event()
    wake = _threadsafe(done.set)
    future.add_done_callback(lambda _: wake())
    await done.wait()
    try:
        return future.result()
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
        where = f"program run of example {program_run!r}" if program_run else "relay"
        raise WorkerLostError(f"the {where} was lost: its Ray worker died ({type(exc).__name__})") from exc


@attrs.define
class _RayStarted:
    """Whether an executor of this process started Ray, and how many open executors use it."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    by_executor: bool = False
    users: int = 0


_STARTED_RAY = _RayStarted()


def _placement(options: Mapping[str, Any]) -> dict[str, Any]:
    """Actor options as an error shows them: without the ``runtime_env`` (its ``env_vars`` may hold keys)."""
    return {name: value for name, value in options.items() if name != "runtime_env"}


def _gist(exc: BaseException, *, last: bool = True) -> str:
    """The first (and last) line of a Ray error's message (between them, a remote traceback)."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if line.strip()]
    return " ... ".join(dict.fromkeys(lines[:1] + (lines[-1:] if last else [])))


def _threadsafe(action: Callable[[], None]) -> Callable[[], None]:
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


# -- shipping programs ---------------------------------------------------------------------------------
def dump_program(program: object, lms: LMTable) -> bytes:
    """``program`` pickled with cloudpickle, every LM object in it replaced by its key in ``lms``."""
    buffer = io.BytesIO()
    _ProgramPickler(buffer, lms).dump(program)
    return buffer.getvalue()


def load_program(data: bytes) -> object:
    """A program pickled by :func:`dump_program`, its LMs :class:`RelayedLM` stand-ins."""
    return _ProgramUnpickler(io.BytesIO(data)).load()


class _ProgramPickler(ray.cloudpickle.CloudPickler if ray is not None else pickle.Pickler):  # type: ignore[misc]
    def __init__(self, file: io.BytesIO, lms: LMTable) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._lm_table = lms

    def persistent_id(self, obj: Any) -> Any:
        if _is_lm(obj):
            return (_LM_TAG, self._lm_table.key_of(obj), str(obj.model))
        return None


class _ProgramUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        tag, key, model = pid
        if tag != _LM_TAG:
            raise pickle.UnpicklingError(f"unknown persistent id {tag!r}")
        return RelayedLM(key, model)


def _is_lm(obj: object) -> bool:
    if isinstance(obj, type | Predict | RelayedLM):
        return False
    try:
        return isinstance(obj, LM)
    except Exception:  # the protocol check reads attributes; a raising property is not an LM
        return False


# -- actors (plain classes here; made Ray actors by RayExecutor) -----------------------------------------
class _Relay:
    """Mailbox between remote runs and the driver: a worker's ``ask`` waits for the driver's ``answer``
    to a request the driver fetched with ``take`` (the driver cannot be called; it can only call)."""

    def __init__(self) -> None:
        self._queues: dict[int, asyncio.Queue[tuple[int, LMRequest]]] = {}
        self._waiting: dict[int, tuple[int, asyncio.Future[LMReply]]] = {}
        self._closed: set[int] = set()
        self._ids = itertools.count()

    def ping(self) -> bool:
        return True

    def _queue(self, run_id: int) -> asyncio.Queue[tuple[int, LMRequest]]:
        return self._queues.setdefault(run_id, asyncio.Queue())

    async def ask(self, run_id: int, request: LMRequest) -> LMReply:
        if run_id in self._closed:
            raise asyncio.CancelledError(f"program run {run_id} is over")
        request_id = next(self._ids)
        future: asyncio.Future[LMReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (run_id, future)
        self._queue(run_id).put_nowait((request_id, request))
        try:
            return await future
        finally:
            self._waiting.pop(request_id, None)

    async def take(self, run_id: int, wait_seconds: float) -> list[tuple[int, LMRequest]]:
        queue = self._queue(run_id)
        try:
            first = await asyncio.wait_for(queue.get(), wait_seconds)
        except TimeoutError:
            return []
        taken = [first]
        while not queue.empty():
            taken.append(queue.get_nowait())
        return taken

    def answer(self, request_id: int, reply: LMReply) -> None:
        found = self._waiting.get(request_id)
        if found is not None and not found[1].done():
            found[1].set_result(reply)

    def close(self, run_id: int) -> None:
        self._closed.add(run_id)
        self._queues.pop(run_id, None)
        for owner, future in list(self._waiting.values()):
            if owner == run_id and not future.done():
                future.cancel()


class _ActorChannel:
    def __init__(self, relay: Any, run_id: int) -> None:
        self._relay = relay
        self._run_id = run_id

    async def ask(self, request: LMRequest) -> LMReply:
        reply: LMReply = await self._relay.ask.remote(self._run_id, request)
        return reply


class _WorkerActor:
    """A worker process: loads programs once, runs program runs with their LM calls relayed."""

    def __init__(self) -> None:
        self._programs: OrderedDict[str, object] = OrderedDict()

    def pid(self) -> int:
        return os.getpid()

    async def run(
        self,
        box: Sequence[Any],
        key: str,
        relay: Any,
        run_id: int,
        run: ProgramRun,
        own_lms: Mapping[str, RelayedLM | None],
    ) -> RelayedOutcome:
        program = self._programs.get(key)
        if program is None:
            try:
                program = load_program(await box[0])
            except Exception as exc:
                return RelayedOutcome(
                    config_error=f"the program could not be loaded on a Ray worker ({type(exc).__name__}: "
                    f"{exc}); a worker needs the program's modules importable (install them on every node, "
                    "or pass init_options={'runtime_env': {'working_dir': ...}})"
                )
            self._programs[key] = program
            while len(self._programs) > 8:
                self._programs.popitem(last=False)
        outcome = await run_relayed(program, run, _ActorChannel(relay, run_id), own_lms)
        try:
            # Ray would fail to send it back only after this returns, as an error of no run: found here,
            # it is the setup fault it is (the program returns what cannot travel).
            ray.cloudpickle.dumps(outcome)  # type: ignore[no-untyped-call]
        except Exception as exc:
            return RelayedOutcome(
                config_error=f"the program's result for example {run.example_id!r} cannot be sent back from "
                f"a Ray worker ({type(exc).__name__}: {exc}): a program run on Ray must return what pickles"
            )
        return outcome
