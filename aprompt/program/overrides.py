"""Per-task prompt overrides: run a program with other instructions and demos without changing it.

An optimizer evaluates many prompt choices at once through ONE program object. Instead of mutating
the predictors (which concurrent runs would see), it sets, in a context variable, the instruction,
demos and reply format each predictor should use, plus a rollout index and sampling parameters (for
bootstrapping). Predictors read the override of the task they run in; tasks started inside inherit
it.

Context variables reach only code that runs in the evaluation's context: the program's own tasks, and
threads started with :func:`anyio.to_thread.run_sync` or ``contextvars.copy_context().run``. A worker
task started before the optimization (a queue consumer) or a thread pool / event loop of its own calls
the predictors with no override, so every candidate would silently score as the baseline.
:func:`watch_predictors` catches that: while it is active, a call of a watched predictor outside an
override covering it is recorded, and the evaluation raises.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.program.adapter import REPLY_FORMATS, ReplyFormat, check_reply_format
from aprompt.program.values import Demo, as_demo

__all__ = [
    "ActiveOverrides",
    "PredictorWatch",
    "PromptOverride",
    "PromptState",
    "active_overrides",
    "current_run",
    "current_watch",
    "note_call",
    "override_prompts",
    "watch_predictors",
]


def _demo_tuple(demos: Iterable[Demo | Mapping[str, Any]]) -> tuple[Demo, ...]:
    return tuple(as_demo(d) for d in demos)


@attrs.frozen
class PromptOverride:
    """The instruction, demos and reply format one predictor uses inside :func:`override_prompts`;
    ``reply_format=None`` keeps the predictor's own."""

    instruction: str
    demos: tuple[Demo, ...] = attrs.field(default=(), converter=_demo_tuple)
    reply_format: ReplyFormat | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(REPLY_FORMATS))
    )


@attrs.frozen
class ActiveOverrides:
    """What predictors in the current task read: prompts by predictor id, rollout, sampling."""

    prompts: Mapping[int, PromptOverride]
    rollout: int | None = None
    lm_params: Mapping[str, Any] = attrs.field(factory=dict)
    keep_alive: tuple[object, ...] = attrs.field(default=(), eq=False, repr=False)
    #: The program the block was opened for, and its predictors' dotted names by id (named in ``prompts``
    #: or not): a run or a trace of that program inside the block reads them instead of walking it again.
    program: object = attrs.field(default=None, eq=False, repr=False)
    names: Mapping[int, str] = attrs.field(factory=dict, eq=False, repr=False)
    #: The :class:`PromptState` the block applies, when it was opened by :meth:`PromptState.apply`.
    state: object = attrs.field(default=None, eq=False, repr=False)

    @property
    def covered(self) -> Collection[int]:
        """ids of every predictor of the program the block was opened for."""
        return self.names.keys()


def _plain_dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return dict(mapping)


@attrs.frozen
class PromptState:
    """The prompt state of one program run, as a plain, serializable value: the prompts by predictor
    NAME (see :func:`~aprompt.program.named_predictors`), the rollout and the sampling parameters.

    It travels with a run wherever the run happens (another task, thread, process or machine) and is
    applied there to that place's own copy of the program with :meth:`apply`; names, unlike the
    predictor ids :func:`override_prompts` resolves them to, mean the same in every copy.

    Example::

        state = PromptState({"answer": PromptOverride("Reply with a number.")}, rollout=1)
        with state.apply(copy_of_program):
            prediction = await copy_of_program(question="...")
    """

    prompts: Mapping[str, PromptOverride] = attrs.field(factory=dict, converter=_plain_dict)
    rollout: int | None = None
    lm_params: Mapping[str, Any] = attrs.field(factory=dict, converter=_plain_dict)

    def apply(self, program: object) -> AbstractContextManager[ActiveOverrides]:
        """:func:`override_prompts` with this state for ``program`` (raises :class:`ConfigError` when
        it has no predictor of a name the state gives).

        Inside a block this same state object already holds for the same program object (each run of
        an evaluation, which opens one block for all its runs), the block in force is kept: walking
        the program again per run was ~5 % of an optimization's client CPU.
        """
        active = _ACTIVE.get()
        if active is not None and active.state is self and active.program is program:
            return nullcontext(active)
        return _open_overrides(program, self.prompts, self.rollout, self.lm_params, self)

    def completed(self, predictors: Iterable[tuple[str, Any]]) -> PromptState:
        """This state with the current own prompt of each other predictor of ``predictors`` (name,
        predictor pairs of the program) made explicit: applied to another copy of the program, whatever
        prompts that copy holds, a run sees exactly what it would see here."""
        prompts = dict(self.prompts)
        for name, predictor in predictors:
            if name not in prompts:
                prompts[name] = PromptOverride(predictor.instruction, predictor.demos, predictor.reply_format)
        return attrs.evolve(self, prompts=prompts)


_ACTIVE: contextvars.ContextVar[ActiveOverrides | None] = contextvars.ContextVar(
    "aprompt_prompt_overrides", default=None
)


def active_overrides() -> ActiveOverrides | None:
    """The overrides of the innermost :func:`override_prompts` block of this task, if any."""
    return _ACTIVE.get()


@contextmanager
def override_prompts(
    program: object,
    prompts: Mapping[str, PromptOverride | tuple[str, Sequence[Any]]],
    *,
    rollout: int | None = None,
    lm_params: Mapping[str, Any] | None = None,
) -> Iterator[ActiveOverrides]:
    """Within the block (this task and tasks started in it), predictors of ``program`` named in
    ``prompts`` use those instructions and demos; ``rollout`` and ``lm_params`` apply to every call.

    Example::

        with override_prompts(program, {"answer": PromptOverride("Reply with a number.", demos)}):
            prediction = await program(question="...")
    """
    with _open_overrides(program, prompts, rollout, lm_params, None) as active:
        yield active


@contextmanager
def _open_overrides(
    program: object,
    prompts: Mapping[str, PromptOverride | tuple[str, Sequence[Any]]],
    rollout: int | None,
    lm_params: Mapping[str, Any] | None,
    state: PromptState | None,
) -> Iterator[ActiveOverrides]:
    from aprompt.program.discovery import named_predictors  # discovery imports the predictor module

    by_name = dict(named_predictors(program))
    unknown = sorted(set(prompts) - set(by_name))
    if unknown:
        raise ConfigError(f"no predictor named {unknown} in the program (has {sorted(by_name)})")
    resolved: dict[int, PromptOverride] = {}
    for name, value in prompts.items():
        override = value if isinstance(value, PromptOverride) else PromptOverride(value[0], value[1])
        if override.reply_format is not None:
            check_reply_format(by_name[name].signature, override.reply_format, f"predictor {name!r}")
        resolved[id(by_name[name])] = override
    active = ActiveOverrides(
        resolved,
        rollout,
        dict(lm_params or {}),
        keep_alive=tuple(by_name.values()),
        program=program,
        names={id(p): name for name, p in by_name.items()},
        state=state,
    )
    token = _ACTIVE.set(active)
    try:
        yield active
    finally:
        _ACTIVE.reset(token)


@attrs.define
class PredictorWatch:
    """Predictors of a program under optimization, and those called with no override covering them."""

    names: Mapping[int, str]
    keep_alive: tuple[object, ...] = attrs.field(eq=False, repr=False)
    unguided: list[str] = attrs.field(factory=list)
    #: Predictors the program called that are not among its predictors (discovery did not find them:
    #: they ran with their own prompts), by id: their repr, and whether it was reported.
    undiscovered: dict[int, str] = attrs.field(factory=dict)
    reported: set[int] = attrs.field(factory=set)
    #: The reprs warned of: a predictor the program makes anew in every call is a new object each run.
    reported_reprs: set[str] = attrs.field(factory=set)
    #: For a run of ``optimize``: whether it writes its result into these very predictors
    #: (``in_place=True``); ``None`` for another watch.
    in_place: bool | None = None


# The one piece of module state: a call made outside every context (a foreign thread, a task started
# before the run) can only be matched to its run through the predictor object itself. Replaced, never
# mutated, under the lock, so readers on any thread see a consistent tuple without locking.
_WATCHES: tuple[PredictorWatch, ...] = ()
_WATCHES_LOCK = threading.Lock()
_CURRENT_WATCH: contextvars.ContextVar[PredictorWatch | None] = contextvars.ContextVar(
    "aprompt_predictor_watch", default=None
)


def current_watch() -> PredictorWatch | None:
    """The watch of the run this task belongs to, if any."""
    return _CURRENT_WATCH.get()


@contextmanager
def watch_predictors(
    predictors: Sequence[tuple[str, object]], *, in_place: bool | None = None
) -> Iterator[PredictorWatch]:
    """Within the block, record every call of one of ``predictors`` made outside an override block
    opened for their program (see the module); :func:`current_watch` returns the watch in this task and
    tasks started in it.

    ``in_place``: the block is a run of ``optimize``, which writes its result into these predictors
    (``True``) or not (``False``). Two such blocks open at once on one predictor, one of them in place,
    raise :class:`ConfigError`: the in-place run's prompts, written when it ends, would overwrite the
    other's result or change the prompts the other's runs read, without a word.

    Example::

        with watch_predictors(named_predictors(program)) as watch:
            ...  # evaluate
        assert not watch.unguided
    """
    global _WATCHES
    watch = PredictorWatch(
        {id(p): name for name, p in predictors},
        keep_alive=tuple(p for _, p in predictors),
        in_place=in_place,
    )
    with _WATCHES_LOCK:  # checked and registered at once: two runs starting together cannot both pass
        _check_not_written_by_another_run(watch)
        _WATCHES = (*_WATCHES, watch)
    token = _CURRENT_WATCH.set(watch)
    try:
        yield watch
    finally:
        _CURRENT_WATCH.reset(token)
        with _WATCHES_LOCK:
            _WATCHES = tuple(w for w in _WATCHES if w is not watch)


def _check_not_written_by_another_run(watch: PredictorWatch) -> None:
    if watch.in_place is None:
        return
    for other in _WATCHES:
        if other.in_place is None or not (watch.in_place or other.in_place):
            continue
        shared = [name for key, name in watch.names.items() if key in other.names]
        if shared:
            raise ConfigError(
                f"predictor(s) {sorted(shared)} of the program are also optimized by another optimize() "
                "running in this process, one of the two with in_place=True: that run writes its prompts "
                "into them when it ends, over the other's result or under its runs. Optimize copies "
                "(in_place=False) in both, or run them one after the other"
            )


#: The program run the calls of this task belong to (an object of its own), or None outside one.
_IN_PROGRAM: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "aprompt_in_program", default=None
)


@contextmanager
def running_program() -> Iterator[None]:
    """Mark the calls made in this block (and its tasks) as the program's own, not its metric's, and
    as one run's (see :func:`current_run`)."""
    token = _IN_PROGRAM.set(object())
    try:
        yield
    finally:
        _IN_PROGRAM.reset(token)


def current_run() -> object | None:
    """The program run (of :func:`running_program`) this task's calls belong to, the same object for all
    of them and for no other run's; None outside a run. Not a trace: a program may open traces itself."""
    return _IN_PROGRAM.get()


def note_call(predictor: object, active: ActiveOverrides | None) -> None:
    """Called by every predictor call: record it on each watch of ``predictor`` unless ``active`` (the
    calling task's overrides) covers it; and a predictor the program under optimization called that is not
    one of its predictors (a metric's judge is not the program's) on the run's own watch."""
    watches = _WATCHES
    if not watches or (active is not None and id(predictor) in active.covered):
        return
    own = _CURRENT_WATCH.get()
    if own is not None and _IN_PROGRAM.get() is not None and id(predictor) not in own.names:
        own.undiscovered.setdefault(id(predictor), repr(predictor))
    for watch in watches:
        name = watch.names.get(id(predictor))
        if name is not None:
            watch.unguided.append(name)
