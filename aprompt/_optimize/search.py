"""The search loop (MIPRO stage 3): TPE-guided mini-batch trials with periodic full evaluations.

The baseline (all candidates at index 0) is fully evaluated first, then the ``references`` (the strategies
pass the prompt a user would write by hand: instructions as written, labeled training examples as demos),
so the pick weighs every program against them from the start. Then the TPE trials run, each on a
seeded mini-batch (after the TPE's covering trials, each trial's combination is a Thompson draw from
the pooled additive model instead: :func:`~aprompt._optimize.pooling.thompson_choice`), with periodic full
evaluations beside them (below); every ``full_eval_every`` trials the
combination with the best pooled mini-batch mean that has no full evaluation yet gets one.

**Continuous trials.** ``parallel_trials`` trials are in flight at a time, with no batch barrier, told to
the TPE strictly in number order; each periodic evaluation runs beside the trials that follow it, on a copy
of the search, and joins it at a fixed trial, so every decision depends on the seed and the results only,
whatever the timing (:mod:`aprompt._optimize.trial_window`); the candidates it adds join the search with it
(:mod:`aprompt._optimize.search_growth`). Each step is admitted by the run's limits
before it starts; once a limit refuses one, no trial starts any more, those running are completed and
recorded, and the search returns the best found.

The returned choice is decided by :mod:`aprompt._optimize.final_pick` from all the evidence: every
combination's per-example scores from trials and full evaluations, compared pairwise on shared examples. A
fully evaluated combination replaces the baseline (or an earlier pick) only when the lower confidence bound
of its mean paired difference on their shared examples is above 0 (one-sided 95 %, Bonferroni-adjusted for
the fully evaluated combinations weighed; below 10 validation examples a higher mean); they are weighed from
the highest mean down, and ties never go by evaluation order (the pooled estimate of
:mod:`aprompt._optimize.pooling` breaks them). At the end, the plan's last full evaluation(s) go to the
pick's most promising *challenger* — a combination that scored above the pick on shared examples but has no
full evaluation — or, when there is none, to the best untested combination by the pooled estimate
(:mod:`aprompt._optimize.search_ranking`); the pick is then decided again. When it is still undecided, the
pick and its strongest fully evaluated challengers run on training examples they do not show as demos, and
the pick is decided again with those scores
(:mod:`aprompt._optimize.confirmation`). Under a limit that kept the runs of a confirmation that was not
needed, they go to late races, whose combinations are returned only as the pick of all the evidence
(``SearchLoop.decide``); these steps of the end are :mod:`aprompt._optimize.search_end`.
``SearchOutcome.pick`` says what was returned and why (also logged at INFO).

When the baseline and every trial scored 0 on every example at the first full evaluation after the
baseline, nothing the search can try is expected to score either: the search stops there (the trials
running are cancelled; no more trials or full evaluations) and returns the baseline with
``pick.stopped == "nothing_scores"``.

Trials and full evaluations are run, journaled and checked on resume by :mod:`aprompt._optimize.search_steps`
(complete across LM outages; a full evaluation made ahead of the search is handed in through
``prefetched``); LM failures that remain are reported in ``failures``.

With ``racing`` (``Budget.racing``, the default), the periodic and final full evaluations are spent on races
among the most promising untested combinations instead, and a trial clearly losing to the pick after the
first part of its mini-batch stops there (:mod:`aprompt._optimize.racing`); the rungs of the races are
evidence for the pick like trials, and still only a fully evaluated combination can be returned. A trial's
second part, and the next step of a rung's sure leader, do not wait for the slowest answer before them when
the answers in already settle that they run (same module); the records and decisions are those of waiting.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs

from aprompt._optimize import search_ranking
from aprompt._optimize.candidates import Candidates, Choice, choice_key
from aprompt._optimize.choice_runs import ChoiceRuns
from aprompt._optimize.confirmation import confirmation_note
from aprompt._optimize.evaluate import Evaluation, Metric, OnResult
from aprompt._optimize.events import Event, FullEvaluation, NewBest, TrialScored
from aprompt._optimize.evidence_book import EvidenceBook
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import (
    MIN_SHARED,
    NOTHING_SCORES,
    FinalPick,
    Key,
    key_of,
    nothing_scores,
    pick,
)
from aprompt._optimize.outage import OutageGuard
from aprompt._optimize.search_end import finish_search
from aprompt._optimize.search_evidence import Record, SearchEvidence, renamed
from aprompt._optimize.search_growth import Origin, added_instructions, named, regrown, with_instruction
from aprompt._optimize.search_records import (
    FullEval,
    Memo,
    RungEval,
    SearchOutcome,
    Trial,
    no_memo,
)
from aprompt._optimize.search_steps import (
    full_evaluation,
    full_evaluations,
    journaled_trial,
    run_full_evaluation,
)
from aprompt._optimize.trial_window import TrialWindow
from aprompt._slots import Limiter, Slots
from aprompt.lm.types import LM
from aprompt.tpe import Categorical, TPESampler

Emit = Callable[[Event], Awaitable[None]]
logger = logging.getLogger("aprompt")

#: See ``SearchLoop.prefetched``.
Prefetched = Callable[[Candidates, Choice], Callable[[], Awaitable["FullEval"]] | None]


class ProposalHook(Protocol):
    """Lets a strategy replace instruction indices by its own parameters (MIPRO++)."""

    def extra_parameters(self, candidates: Candidates) -> dict[str, int]: ...

    async def resolve(self, loop: SearchLoop, choice: dict[str, int]) -> dict[str, int]: ...


async def no_hook(loop: SearchLoop) -> None:
    """The default ``SearchLoop.after_evaluation``: nothing."""


@attrs.define
class SearchLoop:
    """Runs one search; see the module docstring. ``emit`` receives progress events."""

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
    #: none began; set by :func:`~aprompt._optimize.search_end.late_races`); see ``decide``.
    before_late: tuple[FinalPick, int] | None = attrs.field(default=None, init=False)
    _pick: FinalPick | None = attrs.field(default=None, init=False)
    #: The choice the last ``NewBest`` named: a pick renamed since (``_named``) is told again by its name.
    _told: Key | None = attrs.field(default=None, init=False)
    #: Why the search stopped on its own before its planned end (``"nothing_scores"``), or ``None``.
    stopped: str | None = attrs.field(default=None, init=False)
    _sampler: TPESampler | None = attrs.field(default=None, init=False)
    _reference_choices: list[dict[str, int]] = attrs.field(factory=list, init=False)
    #: Combinations fully evaluated right after the baseline (see ``_reference_evaluations``).
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
    #: :class:`~aprompt.lm._metering.BudgetKept` (the trials end, the last race runs); ``None``: trials
    #: are admitted by ``admit_step``.
    admit_trial: Callable[[str, Sequence[tuple[str, str, int]]], None] | None = attrs.field(
        default=None, kw_only=True
    )
    #: Under ``max_time``: the seconds left (trials end when the pace says the last evaluation would not
    #: fit, see :mod:`aprompt._optimize.trial_window`).
    time_limited: bool = attrs.field(default=False, kw_only=True)
    seconds_left: Callable[[], float] = attrs.field(default=lambda: math.inf, kw_only=True)
    #: Program runs the trials scored per second so far (``None`` before any).
    runs_per_second: float | None = attrs.field(default=None, init=False)
    #: The limit that ended the trials early to keep what the last race needs
    #: (:class:`~aprompt.lm._metering.BudgetKept`, or ``"max_time"``), or that left the final races fewer
    #: program runs than the plan gives them: the run finishes, short of its plan.
    cut_short_by: str | None = attrs.field(default=None, init=False)
    #: Program runs the races leave for confirming an undecided pick under a limit
    #: (:func:`~aprompt._optimize.confirmation.runs_kept_for_confirmation`; 0 when none is kept).
    confirmation_kept: int = attrs.field(default=0, kw_only=True)
    #: Program runs the rest of the run's budget pays for (``None``: no limit says).
    runs_affordable: Callable[[], int | None] = attrs.field(default=lambda: None, kw_only=True)
    #: The limit that pays for the fewest of those runs (``None``: no limit says).
    binding_limit: Callable[[], str | None] = attrs.field(default=lambda: None, kw_only=True)
    #: Told the limit that gave a step fewer program runs than it asked for (``RunContext.note_bound``).
    limit_bound: Callable[[str | None], None] = attrs.field(default=lambda limit: None, kw_only=True)
    #: Keep admitted steps counted at their estimates after they end, until retired at a point the
    #: search's flow fixes (``RunContext.hold_steps`` / ``retire_steps``): ``[(journal kind, key), ...]``.
    hold_steps: Callable[[Sequence[tuple[str, str]]], None] = attrs.field(
        default=lambda keys: None, kw_only=True
    )
    retire_steps: Callable[[Sequence[tuple[str, str]]], None] = attrs.field(
        default=lambda keys: None, kw_only=True
    )
    #: A decision that depends on the budget spent so far, journaled (``RunContext.decided``).
    decided: Callable[[str, Callable[[], int]], int] = attrs.field(
        default=lambda key, compute: compute(), kw_only=True
    )
    pooled: bool = attrs.field(default=True, kw_only=True)
    # Outage handling: steps are completed across outages; own LM failures are reported in `failures`.
    outage: OutageGuard = attrs.field(kw_only=True)
    failures: dict[str, str] = attrs.field(factory=dict, kw_only=True)
    #: Awaited right after each periodic evaluation, on the copy of the search it ran on (see "Continuous
    #: trials" in the module docstring): candidates it adds (reflective proposals) join the search with it.
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

    async def run(self) -> SearchOutcome:
        await self.full_evaluation(self.candidates.baseline(), is_baseline=True)
        await self._reference_evaluations()
        space = self._space()
        if space:
            self._sampler = TPESampler(space, seed=self.seed, n_trials_hint=self.n_trials)
            await TrialWindow(self).run()
        return await self.run_outcome(final_full_eval=True)

    async def _reference_evaluations(self) -> None:
        """Fully evaluate the ``references`` (the prompt a user would write by hand: the instruction with
        labeled training examples as demos) right after the baseline, so the final pick weighs every
        program against them from the start and returns one of the others only on paired evidence."""
        space = self._space()
        for reference in self.references:
            choice = {key: value for key, value in reference.items() if key in space}
            if not choice or any(v >= space[k].n_choices for k, v in choice.items()):
                continue
            choice = {**self.candidates.baseline(), **choice}
            if choice_key(choice) in self.tested or self.should_stop() is not None:
                continue
            self._reference_choices.append(choice)
            await self.full_evaluation(choice)

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

    async def run_outcome(self, *, final_full_eval: bool = False) -> SearchOutcome:
        """The outcome so far, decided by :func:`~aprompt._optimize.final_pick.pick`; with
        ``final_full_eval``, first spend the plan's remaining full evaluations (at least one) on the
        pick's challengers (see the module docstring)."""
        assert self.full_evals, "the baseline is evaluated first"
        if self.stopped == NOTHING_SCORES and not self._nothing_scored():
            self.stopped = None  # a strategy ran more trials after the stop (module_opro), and one scored
        if final_full_eval:
            await finish_search(self)
        chosen = self.decide()
        # The evidence recorded since the last full evaluation (trials, a confirmation a stop cut short)
        # may move the pick: the returned program is told as every pick before it.
        await self._adopt(chosen)
        if self.confirmations:
            note = confirmation_note(self.confirmations, chosen.choice, self._with_confirmations)
            chosen = attrs.evolve(chosen, reason=f"{chosen.reason}; {note}")
        if self.stopped == NOTHING_SCORES:
            chosen = attrs.evolve(
                chosen,
                stopped=NOTHING_SCORES,
                reason=f"kept the unoptimized program: it and all {len(self.trials)} trials scored 0 on "
                "every example, so the search stopped early (nothing_scores)",
            )
        logger.info("aprompt: final pick: %s", chosen.reason)
        return SearchOutcome(
            best_choice=dict(chosen.choice),
            best_score=self._full_score(chosen.choice),
            baseline_score=self.full_evals[0].score,
            trials=tuple(self.trials),
            full_evals=tuple(self.full_evals),
            pick=chosen,
            rungs=tuple(self.rungs),
            confirmations=tuple(self.confirmations),
        )

    def decide(self) -> FinalPick:
        """The pick from all evidence so far (a pure function of the trials, rungs and full evaluations).

        After late races (:func:`~aprompt._optimize.search_end.late_races`), the pick decided before them
        stands unless the pick of all the evidence is one of their combinations: each fully evaluated
        combination raises the bar the pick sets every one of them (its level is shared among them), so
        combinations raced only to spend a budget kept for a confirmation that did not run must not undo
        the pick by merely being weighed.
        """
        chosen = pick(
            self._evidence().evidence(self.tested),
            self.full_evals[0].choice,
            min_shared=min(MIN_SHARED, len(self.valset)),
            references=self._reference_choices,
        )
        if self.before_late is None:
            return chosen
        settled, n_full_evals = self.before_late
        late = {key_of(f.choice) for f in self.full_evals[n_full_evals:]}
        if key_of(chosen.choice) in late | {key_of(settled.choice)}:
            return chosen
        if not late:  # only partial runs: they order equal means anew, never decide a pick
            return settled
        return attrs.evolve(
            settled,
            reason=f"{settled.reason}; the {len(late)} combination(s) raced after it was decided were not "
            "shown better",
        )

    def scores_of(self, choice: Mapping[str, int]) -> dict[str, float]:
        """Every example score of ``choice`` so far (trials, rungs, full evaluations), by example id."""
        return self._evidence().scores(choice, shelves=3)

    def _evidence(self) -> EvidenceBook:
        """The book of every record so far (:meth:`SearchEvidence.book`)."""
        return self._records.book()

    def _full_score(self, choice: Mapping[str, int]) -> float:
        return self._records.full_score(choice)

    async def add_confirmation(self, record: FullEval) -> None:
        """Add a contender's runs on training examples (a confirmation) to the evidence."""
        record = self._renamed(record)
        index = self._records.add_confirmation(record)
        self.failures.update({f"confirmation:{index}:{eid}": e for eid, e in record.lm_failures.items()})

    def _with_confirmations(self, choice: Mapping[str, int]) -> dict[str, float]:
        return self._evidence().scores(choice)

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

    def stops_as_nothing_scores(self) -> bool:
        """At the first full evaluation after the baseline's: stop when nothing has scored above 0."""
        if len(self.full_evals) != 1 + len(self._reference_choices) or not self._nothing_scored():
            return False
        self.stopped = NOTHING_SCORES
        logger.info(
            "aprompt: the unoptimized program and all %d trials scored 0 on every example; "
            "stopping the search (nothing_scores)",
            len(self.trials),
        )
        return True

    def _nothing_scored(self) -> bool:
        evaluated = [t.scores for t in self.trials]
        evaluated += [f.scores for f in self.full_evals[1 : 1 + len(self._reference_choices)]]
        return nothing_scores(self.full_evals[0].scores, evaluated)

    async def full_evaluate_best_untested(self) -> FullEval | None:
        if self.stopped is not None or self.should_stop() is not None or self.stops_as_nothing_scores():
            return None
        choice = self.next_full_evaluation()
        if choice is None:
            return None
        # Its trials' scores are reused, not run (and admitted) again, as in the final evaluations.
        return await self.full_evaluation(choice, known=self.scores_of(choice))

    def next_full_evaluation(self) -> dict[str, int] | None:
        """The combination with the best pooled estimate (see :mod:`aprompt._optimize.pooling`) that has
        no full evaluation yet."""
        ranked = self.ranked_untested(1)
        return ranked[0] if ranked else None

    def ranked_untested(self, limit: int) -> list[dict[str, int]]:
        """Up to ``limit`` combinations without a full evaluation (nor dropped by a race), best pooled
        estimate first, then by an optimistic bound (``RACE_OPTIMISM``: a choice with few trials gets a
        race); trials and race rungs are the evidence."""
        space = {name: dist.n_choices for name, dist in self.candidates.parameters().items()}
        return search_ranking.ranked_untested(
            self._records.pool, self.observations(), space, self.settled(), limit, pooled=self.pooled
        )

    def drawn_untested(self, limit: int, race: int) -> list[dict[str, int]]:
        """Up to ``limit`` distinct combinations without a full evaluation (nor dropped by a race), each
        a Thompson draw from the pooled model (:func:`~aprompt._optimize.search_ranking.drawn_untested`,
        seeded by the seed and ``race``): entrants for a race when every combination the evidence ranks
        is settled, so a budget kept for the last evaluation is spent on combinations not tried yet
        instead of left unspent. Empty without pooling, with a proposal hook (its parameters are not the
        candidates'), or before any trial."""
        if not self.pooled or self.proposal_hook is not None:
            return []
        space = {name: dist.n_choices for name, dist in self.candidates.parameters().items()}
        observations = self.observations()
        return search_ranking.drawn_untested(
            observations, space, self.settled(), limit, seed=self.seed, race=race
        )

    def settled(self) -> set[tuple[tuple[str, int], ...]]:
        """The combinations with a full evaluation or dropped by a race (by key)."""
        return self._records.settled()

    def observations(self) -> list[tuple[Mapping[str, int], float, int]]:
        """The scored trials and race rungs as the pooled model takes them: (choice, mean, examples)."""
        return self._records.observations()

    @property
    def sampler(self) -> TPESampler | None:
        """The TPE of the trials (set by ``run`` when there is a space to search)."""
        return self._sampler

    @property
    def spent(self) -> int:
        """Program runs of the trials, rungs and full evaluations so far (a journaled one's included)."""
        return self._records.spent

    async def single_trial(self, number: int, choice: dict[str, int]) -> Trial:
        """Run and record one trial outside the TPE loop (used by OPRO-style strategies)."""
        trial = await journaled_trial(self, number, choice, self.incumbent())
        await self.record_trial(trial)
        return trial

    def incumbent(self) -> dict[str, float] | None:
        """The current pick's full-evaluation scores a trial is compared with to stop early (racing)."""
        if not self.racing or not self.full_evals:
            return None
        return self.scores_of(self.decide().choice)

    async def record_trial(self, trial: Trial) -> None:
        """Add a trial's scores to the evidence (the TPE is told by the caller)."""
        # A trial asked before a parameter was added to the search is recorded after it (in flight).
        trial = self._renamed(trial)
        self._records.add_trial(trial)
        self.failures.update({f"trial:{trial.number}:{eid}": e for eid, e in trial.lm_failures.items()})
        await self.emit(
            TrialScored(trial.number, trial.choice, trial.score, len(trial.example_ids), trial.n_failed)
        )

    def fork(self, admit_step: Callable[[str, Sequence[tuple[str, str, int]]], None]) -> SearchLoop:
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

    def merge(self, fork: SearchLoop) -> None:
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

    def record_rung(self, rung: RungEval) -> None:
        """Add a race rung's scores to the evidence."""
        rung = self._renamed(rung)
        self._records.add_rung(rung)
        self.failures.update(
            {f"race:{rung.race}:{rung.rung}:{eid}": e for eid, e in rung.lm_failures.items()}
        )

    async def resolve(self, params: Mapping[str, Any]) -> dict[str, int]:
        """The combination a TPE suggestion stands for (the proposal hook's parameters resolved)."""
        choice = {key: int(value) for key, value in params.items()}
        if self.proposal_hook is not None:
            choice = await self.proposal_hook.resolve(self, choice)
        return choice

    async def evaluate_choice(
        self, choice: Choice, examples: Sequence[Example], on_result: OnResult | None = None
    ) -> Evaluation:
        """Score ``choice``'s prompts on ``examples`` (no outage handling, no journal), telling
        ``on_result`` each example's result as it is scored."""
        return await self._runs.evaluate(self.candidates, choice, examples, on_result)

    def run_ahead(self, group: anyio.abc.TaskGroup, choice: Choice, examples: Sequence[Example]) -> None:
        """Start running ``choice`` on ``examples`` ahead of its step (:meth:`ChoiceRuns.run_ahead`)."""
        self._runs.run_ahead(group, self.candidates, choice, examples)

    def has_runs_ahead(self) -> bool:
        """Whether a run started ahead is still going."""
        return self._runs.has_runs_ahead()

    def drop_ahead(self) -> None:
        """Forget the runs started ahead that no step took (the race that started them ended)."""
        self._runs.drop_ahead()

    async def full_evaluation(
        self, choice: Choice, *, is_baseline: bool = False, known: Mapping[str, float] | None = None
    ) -> FullEval:
        """Fully evaluate and record ``choice``, reusing its ``known`` scores; see
        :func:`~aprompt._optimize.search_steps.full_evaluation`."""
        return await full_evaluation(self, choice, is_baseline=is_baseline, known=known)

    async def full_evaluations(self, choices: Sequence[Choice]) -> list[FullEval]:
        """Fully evaluate and record ``choices`` at once, in order; see
        :func:`~aprompt._optimize.search_steps.full_evaluations`."""
        return await full_evaluations(self, choices)

    async def evaluate_in_full(self, choice: Choice, *, is_baseline: bool = False) -> FullEval:
        """Fully evaluate ``choice`` on the validation set without recording it (no journal, no event):
        an evaluation made before the search, handed in later through ``prefetched``."""
        return await run_full_evaluation(self, choice, {}, is_baseline=is_baseline)

    async def record_full_evaluation(self, result: FullEval, is_baseline: bool) -> None:
        """Add a full evaluation to the evidence and decide the pick again."""
        result = self._renamed(result)
        index = self._records.add_full_eval(result)
        self.failures.update({f"full_eval:{index}:{eid}": e for eid, e in result.lm_failures.items()})
        await self.emit(
            FullEvaluation(result.choice, result.score, len(self.valset), result.n_failed, is_baseline)
        )
        await self.decide_again()

    async def decide_again(self) -> None:
        """Decide the pick again from all evidence (no tie goes to the earlier evaluation), telling a new
        one as ``NewBest``."""
        await self._adopt(self.decide())

    async def _adopt(self, chosen: FinalPick) -> None:
        """Make ``chosen`` the pick, telling it as ``NewBest`` when it is another combination, or the same
        one named by parameters added since it was told (so the last ``NewBest`` names the result's
        ``best_choice``)."""
        self._pick = chosen
        if self._told != key_of(chosen.choice):
            self._told = key_of(chosen.choice)
            await self.emit(NewBest(dict(chosen.choice), self._full_score(chosen.choice)))
