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

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from aprompt._optimize import search_ranking
from aprompt._optimize.candidates import Choice, choice_key
from aprompt._optimize.confirmation import confirmation_note
from aprompt._optimize.evaluate import Evaluation, OnResult
from aprompt._optimize.events import FullEvaluation, NewBest, TrialScored
from aprompt._optimize.examples import Example
from aprompt._optimize.final_pick import NOTHING_SCORES, FinalPick, key_of, nothing_scores, pick
from aprompt._optimize.paired_evidence import MIN_SHARED
from aprompt._optimize.search_end import finish_search
from aprompt._optimize.search_records import FullEval, RungEval, SearchOutcome, Trial
from aprompt._optimize.search_state import SearchState
from aprompt._optimize.search_steps import (
    full_evaluation,
    full_evaluations,
    journaled_trial,
    run_full_evaluation,
)
from aprompt._optimize.trial_window import TrialWindow
from aprompt.tpe import TPESampler

logger = logging.getLogger("aprompt")


@attrs.define
class SearchLoop(SearchState):
    """Runs one search; see the module docstring. What it holds (settings, hooks, records) is
    :class:`~aprompt._optimize.search_state.SearchState`'s."""

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

    async def record_trial(self, trial: Trial) -> None:
        """Add a trial's scores to the evidence (the TPE is told by the caller)."""
        # A trial asked before a parameter was added to the search is recorded after it (in flight).
        trial = self._renamed(trial)
        self._records.add_trial(trial)
        self.failures.update({f"trial:{trial.number}:{eid}": e for eid, e in trial.lm_failures.items()})
        replayed = trial.number in self.replayed_trials
        await self.emit(
            TrialScored(
                trial.number, trial.choice, trial.score, len(trial.example_ids), trial.n_failed, replayed
            )
        )

    def record_rung(self, rung: RungEval) -> None:
        """Add a race rung's scores to the evidence."""
        rung = self._renamed(rung)
        self._records.add_rung(rung)
        self.failures.update(
            {f"race:{rung.race}:{rung.rung}:{eid}": e for eid, e in rung.lm_failures.items()}
        )

    async def add_confirmation(self, record: FullEval) -> None:
        """Add a contender's runs on training examples (a confirmation) to the evidence."""
        record = self._renamed(record)
        index = self._records.add_confirmation(record)
        self.failures.update({f"confirmation:{index}:{eid}": e for eid, e in record.lm_failures.items()})

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
