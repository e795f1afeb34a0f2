"""The Ray side of relaying a program run's LM calls to the driver (used by
:class:`~aprompt.executors.ray_executor.RayExecutor`).

* :func:`dump_program` pickles a program with every LM object in it replaced by its key, and
  :func:`load_program` loads it on a worker with :class:`~aprompt.executors.relay.RelayedLM` stand-ins.
* ``_Relay`` is the mailbox actor between remote runs and the driver; ``_WorkerActor`` is a worker
  process that loads programs once and runs program runs with their LM calls sent through the mailbox.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from aprompt.executors.base import ProgramRun
from aprompt.executors.relay import (
    LMReply,
    LMRequest,
    LMTable,
    PredictorSettings,
    RelayedLM,
    RelayedOutcome,
    run_relayed,
)
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict

try:
    import ray
    import ray.cloudpickle
    import ray.exceptions
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    ray = None  # type: ignore[assignment]

__all__ = ["RelayLost", "dump_program", "load_program"]

_LM_TAG = "aprompt-lm"


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
        # The runs over: a late call of one (a cancelled run still going) is refused, never left waiting.
        # Every run below ``_floor`` is over; only those over above it are kept, so this stays as small
        # as the runs in flight, however many runs the relay served.
        self._closed: set[int] = set()
        self._floor = 0
        self._ids = itertools.count()

    def ping(self) -> bool:
        return True

    def _queue(self, run_id: int) -> asyncio.Queue[tuple[int, LMRequest]]:
        return self._queues.setdefault(run_id, asyncio.Queue())

    async def ask(self, run_id: int, request: LMRequest) -> LMReply:
        if run_id < self._floor or run_id in self._closed:
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

    def close(self, run_id: int, floor: int) -> None:
        """``run_id`` is over, and so is every run below ``floor`` (the oldest run the driver has open)."""
        self._closed.add(run_id)
        if floor > self._floor:
            self._floor = floor
            self._closed = {closed for closed in self._closed if closed >= floor}
        self._queues.pop(run_id, None)
        for owner, future in list(self._waiting.values()):
            if owner == run_id and not future.done():
                future.cancel()


class RelayLost(Exception):
    """The relay actor a remote run's LM calls go through died: the run's attempt is void (the program saw
    its LM calls fail for no fault of its prompt or of the LM), to be run again on a new relay."""


class _ActorChannel:
    def __init__(self, relay: Any, run_id: int) -> None:
        self._relay = relay
        self._run_id = run_id
        self.lost = False  # a call found the relay dead: whatever the program made of it is void

    async def ask(self, request: LMRequest) -> LMReply:
        try:
            reply: LMReply = await self._relay.ask.remote(self._run_id, request)
        except ray.exceptions.RayError as exc:
            # Any of Ray's own errors (the relay dead, a system or RPC fault), never an LM's (those come
            # back in the reply): the program must not score a fallback it made of it.
            self.lost = True
            raise RelayLost(f"the relay actor failed ({type(exc).__name__})") from None
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
        settings: Mapping[str, PredictorSettings],
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
        channel = _ActorChannel(relay, run_id)
        try:
            outcome = await run_relayed(program, run, channel, own_lms, settings)
        except Exception:
            if channel.lost:
                raise RelayLost("the relay actor died during the run") from None
            raise
        if channel.lost:  # the program caught the failed call: its result is not the prompt's
            raise RelayLost("the relay actor died during the run")
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
