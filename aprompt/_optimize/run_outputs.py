"""What every evaluated program produced on every example during one optimization, and the run's final
per-example table built from it (:class:`~aprompt._optimize.per_example.ExampleTable`).

An :class:`OutputLog` (opened with :func:`recording_outputs`) keeps the outcomes, so that the final table
needs no LM call: the scores are the full evaluations' own, the outputs those of the same program on the
same example. A run resumed after a crash lost the outputs its earlier process held in memory: those rows
say ``recorded=False`` (the score is still the full evaluation's).
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from aprompt._optimize.per_example import ExampleOutcome, ExampleRow, ExampleTable
from aprompt.run.identity import digest

if TYPE_CHECKING:
    from aprompt._optimize.candidates import Candidates
    from aprompt._optimize.evaluate import ExampleResult
    from aprompt._optimize.examples import Example
    from aprompt._optimize.search_records import SearchOutcome
    from aprompt.run.journal import RunJournal

__all__ = ["EXAMPLES_KIND", "OutputLog", "final_examples", "program_key", "recording_outputs"]


def program_key(prompts: Mapping[str, Any], rollout: int | None, lm_params: Mapping[str, Any]) -> str:
    """What tells one evaluated program from another: its prompts and the call settings applied."""
    return digest([sorted(prompts.items()), rollout, sorted(lm_params.items())])


class OutputLog:
    """What each evaluated program (its prompts) produced on each example during one run, as plain JSON
    (predictions are not kept: only :func:`output_value` of them)."""

    def __init__(self) -> None:
        self._outcomes: dict[str, dict[str, ExampleOutcome]] = {}

    def add(self, key: str, results: Sequence[ExampleResult]) -> None:
        """Record an evaluation's results under its program ``key`` (:func:`program_key`); an example
        left unscored by an LM failure never replaces a scored outcome of the same program."""
        found = self._outcomes.setdefault(key, {})
        for result in results:
            known = found.get(result.example_id)
            if result.score is None and known is not None and known.score is not None:
                continue
            found[result.example_id] = ExampleOutcome.of(result)

    def outcomes(self, prompts: Mapping[str, Any]) -> dict[str, ExampleOutcome]:
        """Example id -> outcome of the program with ``prompts`` (no rollout, no extra call settings)."""
        return dict(self._outcomes.get(program_key(prompts, None, {}), {}))


_OUTPUT_LOG: contextvars.ContextVar[OutputLog | None] = contextvars.ContextVar(
    "aprompt_output_log", default=None
)


@contextmanager
def recording_outputs() -> Iterator[OutputLog]:
    """Within the block (and the tasks started in it), every :func:`~aprompt._optimize.evaluate.evaluate`
    records its outcomes in the yielded log."""
    log = OutputLog()
    token = _OUTPUT_LOG.set(log)
    try:
        yield log
    finally:
        _OUTPUT_LOG.reset(token)


def current_output_log() -> OutputLog | None:
    """The log of the enclosing :func:`recording_outputs` block, if any."""
    return _OUTPUT_LOG.get()


def run_table(
    valset: Sequence[Example],
    scores: Mapping[str, float],
    baseline_scores: Mapping[str, float],
    outputs: Mapping[str, ExampleOutcome],
    baseline_outputs: Mapping[str, ExampleOutcome],
) -> ExampleTable:
    """The table of an optimization: per validation example, the returned program's and the baseline's
    full-evaluation scores (``None``: left unscored), with the outputs recorded for them
    (``recorded=False`` where none was kept)."""

    def outcome(
        example_id: str, found: Mapping[str, float], kept: Mapping[str, ExampleOutcome]
    ) -> ExampleOutcome:
        score = found.get(example_id)
        output = kept.get(example_id)
        return ExampleOutcome(score, recorded=False) if output is None else attrs.evolve(output, score=score)

    return ExampleTable(
        tuple(
            ExampleRow(
                e.id,
                e.inputs,
                e.labels,
                outcome(e.id, scores, outputs),
                outcome(e.id, baseline_scores, baseline_outputs),
            )
            for e in valset
        )
    )


#: The journal kind of an optimization's final per-example table (see :func:`final_examples`).
EXAMPLES_KIND = "examples"


def _choice_key(choice: Mapping[str, int]) -> str:
    return json.dumps(sorted((str(k), int(v)) for k, v in choice.items()))


def _journaled_outputs(journal: RunJournal | None) -> dict[str, dict[str, ExampleOutcome]]:
    """Choice key -> example id -> recorded outcome, from the table an earlier call of the run journaled."""
    found = journal.latest(EXAMPLES_KIND) if journal is not None else None
    if not isinstance(found, Mapping):
        return {}
    try:
        table = ExampleTable.from_dict(found)
        kept: dict[str, dict[str, ExampleOutcome]] = {}
        for column, choice in (("outcome", found["choice"]), ("baseline", found["baseline_choice"])):
            outcomes = kept.setdefault(_choice_key(choice), {})
            for row in table.rows:
                outcome = getattr(row, column)
                if outcome is not None and outcome.recorded:
                    outcomes[row.example_id] = outcome
        return kept
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}  # only a view: a record this aprompt cannot read costs the old outputs, not the run


def final_examples(
    valset: Sequence[Example],
    candidates: Candidates,
    outcome: SearchOutcome,
    log: OutputLog,
    journal: RunJournal | None,
) -> ExampleTable:
    """The per-example table of an optimization's outcome (the returned and the unoptimized program on
    the validation set, from their full evaluations and the outputs ``log`` recorded, or an earlier call
    of the same run journaled), journaled under :data:`EXAMPLES_KIND` for ``aprompt show``/``report``."""
    best, base = dict(outcome.best_choice), candidates.baseline()

    def scores(choice: Mapping[str, int]) -> Mapping[str, float]:
        key = _choice_key(choice)
        fulls = [f for f in outcome.full_evals if _choice_key(f.choice) == key]
        return fulls[-1].scores if fulls else {}

    kept = _journaled_outputs(journal)

    def outputs(choice: Mapping[str, int]) -> dict[str, ExampleOutcome]:
        prompts = candidates.prompts_for(choice)
        # A predictor's own reply format may be named or left out (None: "its own"); the baseline is
        # evaluated both ways (before the formats are listed, and by the search): look both up.
        own = {name: formats[0] for name, formats in candidates.formats.items() if formats}
        plain = {
            name: attrs.evolve(p, reply_format=None) if p.reply_format == own.get(name) else p
            for name, p in prompts.items()
        }
        return {**kept.get(_choice_key(choice), {}), **log.outcomes(plain), **log.outcomes(prompts)}

    table = run_table(valset, scores(best), scores(base), outputs(best), outputs(base))
    record = {"choice": best, "baseline_choice": base, **table.to_dict()}
    # A call that resumes a finished run finds the same table: journaled again, each such call would
    # grow the journal by a copy of the whole validation set's outputs.
    if journal is not None and journal.latest(EXAMPLES_KIND) != json.loads(json.dumps(record, default=str)):
        journal.append(EXAMPLES_KIND, record)
    return table
