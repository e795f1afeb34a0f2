"""What a running search holds (``SearchLoop``'s state, :mod:`aprompt._optimize.search`): its settings and
the run's hooks (limits, journal, outage guard, events), the evidence it records
(:mod:`aprompt._optimize.search_evidence`) with every choice named by the parameters searched as the space
grows mid-run (:mod:`aprompt._optimize.search_growth`), and the copy of it an evaluation beside the trials
runs on (``SearchLoop.fork``), joined back by ``SearchLoop.merge``
(:mod:`aprompt._optimize.trial_window`). The steps the search runs and the decisions it takes are
``SearchLoop``'s own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, Self

import attrs

from aprompt._optimize.candidates import Candidates, Choice
from aprompt._optimize.choice_runs import ChoiceRuns
from aprompt._optimize.evaluate import Metric
from aprompt._optimize.events import Event
from aprompt._optimize.evidence_book import EvidenceBook
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import FinalPick, Key
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.search_evidence import Record, SearchEvidence, renamed
from aprompt._optimize.search_growth import Origin, added_instructions, named, regrown, with_instruction
from aprompt._optimize.search_records import FullEval, Memo, RungEval, Trial, no_memo
from aprompt._slots import Limiter, Slots
from aprompt.lm.types import LM
from aprompt.tpe import Categorical, TPESampler

if TYPE_CHECKING:
    from aprompt._optimize.search import SearchLoop

Emit = Callable[[Event], Awaitable[None]]

#: See ``SearchLoop.prefetched``.
Prefetched = Callable[[Candidates, Choice], Callable[[], Awaitable["FullEval"]] | None]


class ProposalHook(Protocol):
    """Lets a strategy replace instruction indices by its own parameters (MIPRO++)."""

    def extra_parameters(self, candidates: Candidates) -> dict[str, int]: ...

    async def resolve(self, loop: SearchLoop, choice: dict[str, int]) -> dict[str, int]: ...


async def no_hook(loop: SearchLoop) -> None:
    """The default ``SearchLoop.after_evaluation``: nothing."""


@attrs.define
class SearchState:
    """What one search holds; see the module docstring. ``emit`` receives progress events."""

    program: object
    candidates: Candidates
    valset: Sequence[Example]
    metric: Metric
    emit: Emit
    n_trials: int
    minibatch_size: int = 35
    full_eval_every: int = 5
    parallel_trials: int = 2
    seed: int = 0
    lm: LM | None = None
    concurrency: int = 64
    #: Races and trials stopped early (:mod:`aprompt._optimize.racing`) instead of the plain schedule.
    racing: bool = True

    #: The trials, rungs, full evaluations and confirmations, and what is kept up to date from them.
    _records: SearchEvidence = attrs.field(factory=SearchEvidence, init=False)
    #: Races run so far (numbers the next one's journal keys).
    races_started: int = attrs.field(default=0, init=False)
    #: The pick decided when the late races began, and the full evaluations recorded then (``None``:
    #: none began; set by :func:`~aprompt._optimize.search_end.late_races`); see ``SearchLoop.decide``.
    before_late: tuple[FinalPick, int] | None = attrs.field(default=None, init=False)
    _pick: FinalPick | None = attrs.field(default=None, init=False)
    #: The choice the last ``NewBest`` named: a pick renamed since (``_named``) is told again by its name.
    _told: Key | None = attrs.field(default=None, init=False)
    #: Why the search stopped on its own before its planned end (``"nothing_scores"``), or ``None``.
    stopped: str | None = attrs.field(default=None, init=False)
    _sampler: TPESampler | None = attrs.field(default=None, init=False)
    _reference_choices: list[dict[str, int]] = attrs.field(factory=list, init=False)
    #: Combinations fully evaluated right after the baseline (see ``SearchLoop._reference_evaluations``).
    references: Sequence[Mapping[str, int]] = attrs.field(default=(), kw_only=True)
    #: Training examples an undecided final pick is confirmed on (:mod:`aprompt._optimize.confirmation`).
    confirmation: Sequence[Example] = attrs.field(default=(), kw_only=True)
    #: Lets a strategy replace the instruction parameters by its own (MIPRO++); fixed for the run.
    proposal_hook: ProposalHook | None = attrs.field(default=None, kw_only=True)
    memo: Memo = attrs.field(default=no_memo, kw_only=True)
    should_stop: Callable[[], str | None] = attrs.field(default=lambda: None, kw_only=True)
    #: Raises (``LimitReached``) when the run's budget cannot pay for a step: ``(what, [(journal kind,
    #: key, program runs), ...])``; see ``RunContext.admit_step``.
    admit_step: Callable[[str, Sequence[tuple[str, str, int]]], None] = attrs.field(
        default=lambda what, parts: None, kw_only=True
    )
    #: Under a limit that can refuse steps: admits a trial only while the budget also keeps one full
    #: evaluation's program runs for the search's last race, else refuses it with
    #: :class:`~aprompt.lm._limit_reached.BudgetKept` (the trials end, the last race runs); ``None``: trials
    #: are admitted by ``admit_step``.
    admit_trial: Callable[[str, Sequence[tuple[str, str, int]]], None] | None = attrs.field(
        default=None, kw_only=True
    )
    #: Under a limit that can refuse steps: admits a periodic evaluation's step, ``(what, parts, runs of
    #: the trials that may start beside it)``, refusing one the budget cannot pay for with
    #: :class:`~aprompt.lm._limit_reached.BudgetKept` (the trials end, the last race runs on what is left)
    #: rather than stopping the run; ``None``: ``admit_step``, with the trials' runs added to the step.
    admit_evaluation_step: Callable[[str, Sequence[tuple[str, str, int]], int], None] | None = attrs.field(
        default=None, kw_only=True
    )
    #: Under ``max_time``: the seconds left (trials end when the pace says the last evaluation would not
    #: fit, see :mod:`aprompt._optimize.trial_window`).
    time_limited: bool = attrs.field(default=False, kw_only=True)
    seconds_left: Callable[[], float] = attrs.field(default=lambda: math.inf, kw_only=True)
    #: The numbers of the trials read back from the journal (an earlier call ran them).
    replayed_trials: set[int] = attrs.field(factory=set, init=False)
    #: Program runs the trials scored per second so far (``None`` before any).
    runs_per_second: float | None = attrs.field(default=None, init=False)
    #: The median seconds a trial this call ran took (``None`` before any): a race's rungs each wait
    #: about as long, for their slowest answer.
    trial_seconds: float | None = attrs.field(default=None, init=False)
    #: The limit that ended the trials early to keep what the last race needs
    #: (:class:`~aprompt.lm._limit_reached.BudgetKept`, or ``"max_time"``), or that left the final races fewer
    #: program runs than the plan gives them: the run finishes, short of its plan.
    cut_short_by: str | None = attrs.field(default=None, init=False)
    #: Program runs the races leave for confirming an undecided pick under a limit
    #: (:func:`~aprompt._optimize.confirmation.runs_kept_for_confirmation`; 0 when none is kept).
    confirmation_kept: int = attrs.field(default=0, kw_only=True)
    #: Program runs the rest of the run's budget pays for (``None``: no limit says).
    runs_affordable: Callable[[], int | None] = attrs.field(default=lambda: None, kw_only=True)
    #: The limit that pays for the fewest of those runs (``None``: no limit says).
    binding_limit: Callable[[], str | None] = attrs.field(default=lambda: None, kw_only=True)
    #: Told the limit that gave a step fewer program runs than it asked for (``RunSpending.note_bound``).
    limit_bound: Callable[[str | None], None] = attrs.field(default=lambda limit: None, kw_only=True)
    #: Keep admitted steps counted at their estimates after they end, until retired at a point the
    #: search's flow fixes (``RunSpending.hold_steps`` / ``retire_steps``): ``[(journal kind, key), ...]``.
    hold_steps: Callable[[Sequence[tuple[str, str]]], None] = attrs.field(
        default=lambda keys: None, kw_only=True
    )
    retire_steps: Callable[[Sequence[tuple[str, str]]], None] = attrs.field(
        default=lambda keys: None, kw_only=True
    )
    #: A decision that depends on the budget spent so far, journaled (``RunSpending.decided``).
    decided: Callable[[str, Callable[[], int]], int] = attrs.field(
        default=lambda key, compute: compute(), kw_only=True
    )
    pooled: bool = attrs.field(default=True, kw_only=True)
    # Outage handling: steps are completed across outages; own LM failures are reported in `failures`.
    outage: OutageGuard = attrs.field(kw_only=True)
    failures: dict[str, str] = attrs.field(factory=dict, kw_only=True)
    #: Awaited right after each periodic evaluation, on the copy of the search it ran on (see "Continuous
    #: trials" in :mod:`aprompt._optimize.search`): candidates it adds (reflective proposals) join the
    #: search with it.
    after_evaluation: Callable[[SearchLoop], Awaitable[None]] = attrs.field(default=no_hook, kw_only=True)
    #: Full evaluations started before the search (the baseline's, the references'; see
    #: :mod:`aprompt._optimize.strategies.pipeline`): given the candidates and a choice, how to await
    #: the evaluation of the same prompts, or ``None``. Handed in, not evaluated again.
    prefetched: Prefetched | None = attrs.field(default=None, kw_only=True)
    #: Program runs in flight at once: a limit of its own, or one the run's other steps share.
    limiter: Limiter | None = attrs.field(default=None, kw_only=True)
    #: A race's next step may start running ahead, once the answers in settle that it runs those examples
    #: (:mod:`aprompt._optimize.racing`): only when nothing can refuse or stop a step.
    go_ahead: bool = attrs.field(default=False, kw_only=True)
    #: Runs the program with a combination's prompts (and the runs a race starts ahead of their step).
    _runs: ChoiceRuns = attrs.field(init=False)
    #: On a copy made by ``fork``: the search where it was made (what ``merge`` adds back came after).
    _origin: Origin | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        limiter = self.limiter or Slots(max(1, self.concurrency))
        self._runs = ChoiceRuns(self.program, self.metric, self.lm, limiter)

    @property
    def reference_choices(self) -> Sequence[Mapping[str, int]]:
        """The references fully evaluated after the baseline, as whole combinations."""
        return self._reference_choices

    @property
    def trials(self) -> list[Trial]:
        """The trials so far, in record order."""
        return self._records.trials

    @property
    def full_evals(self) -> list[FullEval]:
        """The full evaluations so far, the baseline's first."""
        return self._records.full_evals

    @property
    def rungs(self) -> list[RungEval]:
        """The race rungs so far, in record order."""
        return self._records.rungs

    @property
    def confirmations(self) -> list[FullEval]:
        """The contenders' runs on the ``confirmation`` examples (evidence for the pick, not full
        evaluations)."""
        return self._records.confirmations

    @property
    def raced_out(self) -> set[tuple[tuple[str, int], ...]]:
        """The combinations a race dropped."""
        return self._records.raced_out

    @property
    def tested(self) -> set[tuple[tuple[str, int], ...]]:
        """The combinations with a full evaluation."""
        return self._records.tested

    @property
    def sampler(self) -> TPESampler | None:
        """The TPE of the trials (set by ``SearchLoop.run`` when there is a space to search)."""
        return self._sampler

    @property
    def spent(self) -> int:
        """Program runs of the trials, rungs and full evaluations so far (a journaled one's included)."""
        return self._records.spent

    def scores_of(self, choice: Mapping[str, int]) -> dict[str, float]:
        """Every example score of ``choice`` so far (trials, rungs, full evaluations), by example id."""
        return self._evidence().scores(choice, shelves=3)

    def _evidence(self) -> EvidenceBook:
        """The book of every record so far (:meth:`SearchEvidence.book`)."""
        return self._records.book()

    def _full_score(self, choice: Mapping[str, int]) -> float:
        return self._records.full_score(choice)

    def _with_confirmations(self, choice: Mapping[str, int]) -> dict[str, float]:
        return self._evidence().scores(choice)

    def settled(self) -> set[tuple[tuple[str, int], ...]]:
        """The combinations with a full evaluation or dropped by a race (by key)."""
        return self._records.settled()

    def observations(self) -> list[tuple[Mapping[str, int], float, int]]:
        """The scored trials and race rungs as the pooled model takes them: (choice, mean, examples)."""
        return self._records.observations()

    def _space(self) -> dict[str, Categorical]:
        space: dict[str, Categorical] = self.candidates.parameters()
        if self.proposal_hook is not None:
            space = {k: v for k, v in space.items() if not k.endswith(".instruction")}
            extra = self.proposal_hook.extra_parameters(self.candidates)
            space.update({k: Categorical(n) for k, n in extra.items()})
        return space

    def add_instruction(self, name: str, instruction: str, seen: Iterable[str] = ()) -> int:
        """Add a candidate instruction for predictor ``name`` to the running search; returns its index.
        ``seen``: the training examples it was written from (``Candidates.seen``).

        The TPE (when it searches instructions) is rebuilt over the grown space from its own history,
        so earlier trials keep their weight and the suggestions stay a function of the seed and the
        trials; a trial recorded before the predictor had a searched instruction chose index 0.
        Called from ``after_evaluation``, it adds to the evaluation's copy of the search; the instruction
        joins the search with the evaluation, at the same index unless a proposal hook added one to the
        same predictor meanwhile (no strategy uses both).
        """
        searched = set(self.candidates.parameters())
        self.candidates, index = with_instruction(self.candidates, name, instruction, seen)
        if set(self.candidates.parameters()) != searched:
            self._name_new_parameters()
        if self._sampler is not None:
            space = self._space()
            if space != self._sampler.space:
                self._sampler = regrown(self._sampler, space, seed=self.seed, n_trials=self.n_trials)
        return index

    def _named(self, choice: Mapping[str, int]) -> Mapping[str, int]:
        """``choice`` naming every searched parameter, those it leaves out at index 0: the prompts it ran
        with. A choice made before a predictor's instruction was searched (its first instruction added
        mid-run) names none for it; so named, one program has one key (``key_of``) whenever it ran, and
        is never evaluated again as another combination."""
        return named(choice, self.candidates.parameters())

    def _name_new_parameters(self) -> None:
        """Rename the evidence so far by :meth:`_named` (a parameter was added to the search)."""
        self._records.rename(self._named)
        self._reference_choices = [dict(self._named(c)) for c in self._reference_choices]
        if self._pick is not None:
            self._pick = self._renamed(self._pick)

    def _renamed(self, record: Record) -> Record:
        """``record`` with its choice :meth:`_named` (itself when it names every parameter)."""
        return renamed(record, self._named)

    def fork(self, admit_step: Callable[[str, Sequence[tuple[str, str, int]]], None]) -> Self:
        """A copy of the search for an evaluation beside the trials: it sees the evidence as it is now,
        and its own records only, whatever the trials record meanwhile; it never touches the TPE, never
        stops on its own (``should_stop``), and admits its steps by ``admit_step``."""
        fork = copy.copy(self)
        fork._records = self._records.fork()
        fork._reference_choices = list(self._reference_choices)
        fork._sampler = None
        fork._runs = self._runs.fresh()
        fork._origin = Origin(len(self.full_evals), len(self.rungs), self.spent, self.candidates)
        fork.should_stop = lambda: None
        fork.admit_step = admit_step
        return fork

    def merge(self, fork: SearchState) -> None:
        """Add what ``fork`` (made by :meth:`fork`) recorded since it was made to the search, and the
        candidates its ``after_evaluation`` added, in the order it added them."""
        origin = fork._origin
        assert origin is not None, "merge takes a copy made by fork"
        self._records.merge(
            fork._records, full_evals=origin.full_evals, rungs=origin.rungs, spent=origin.spent
        )
        self.races_started = fork.races_started
        self._pick, self._told = fork._pick, fork._told
        self.stopped = self.stopped or fork.stopped
        for name, text, seen in added_instructions(origin.candidates, fork.candidates):
            self.add_instruction(name, text, seen)
        # What the copy recorded before a parameter the search added meanwhile (a proposal hook's).
        self._name_new_parameters()
