"""What an optimization returns, and saving/loading it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs

from aprompt._errors import StateError
from aprompt._files import json_text, write_text_atomically
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.final_pick import FinalPick
from aprompt._optimize.per_example import PASS_SCORE, ExampleRow, ExampleTable
from aprompt._optimize.search_records import FullEval, Trial
from aprompt.lm.usage import UsageSnapshot
from aprompt.program.state import json_object, load_state, program_state, refuse_keys_given_twice

RESULT_FORMAT = "aprompt-result"
RESULT_VERSION = 1
#: The key of a result file saved without its prompts, telling why (see :meth:`OptimizeResult.save`).
_NO_STATE = "state_not_saved"

#: The program type: ``optimize(program: P, ...)`` gives an ``OptimizeResult[P]``, whose ``program`` is a P.
P = TypeVar("P")


@attrs.frozen
class PhaseUsage:
    """LM usage and wall time of one phase; ``started``: seconds after the run began (phases overlap:
    a step starts the moment its inputs exist)."""

    phase: str
    seconds: float
    usage: UsageSnapshot
    started: float = 0.0


@attrs.frozen
class OptimizeResult(Generic[P]):
    """The outcome of :func:`aprompt.optimize`.

    Attributes:
        program: the optimized program (a copy unless ``in_place=True``).
        strategy / seed: the search strategy's name and the seed the run was given.
        score / baseline_score: full-validation scores of the returned and of the unoptimized program.
        best_choice: candidate index per searched parameter.
        trials / full_evals: every mini-batch trial and every full evaluation.
        confirmations: the runs on training examples that confirmed an undecided pick, one per
            contender and stage, each on training examples it does not show as a demo (see
            :mod:`aprompt._optimize.confirmation`); empty when the pick was decided on the validation set.
        candidates: the instructions and demo sets searched.
        dropped: proposals that failed to parse or validate, with their reasons.
        failures: each with its error, keyed by step and example: the examples LM failures left
            unscored while the LM itself worked (each failing alone, re-run and failing again; see
            :mod:`aprompt._optimize.outage`), as ``"full_eval:0:<id>"``, ``"trial:3:<id>"``, ...; and the
            training examples whose bootstrap run failed, as ``"bootstrap:<id>@<rollout>"``.
        phases: usage and wall time per phase of this call; ``usage`` is their total.
        seconds: the wall time of this call.
        stopped_by: the run limit that stopped the run early, or ``None``.
        pick: why the returned combination was chosen (:class:`~aprompt._optimize.final_pick.FinalPick`):
            ``pick.reason`` in words, ``pick.evidence`` the paired difference with the baseline on shared
            examples (n, mean, interval); ``pick.stopped == "nothing_scores"`` when the search stopped
            because the baseline and every trial scored 0.
        spent: what the run has spent against its limits, earlier calls of a resumed run included:
            ``lm_calls`` (requests sent, retries included), ``tokens``, ``cost``, ``seconds``.
        examples: per validation example, the returned program's and the unoptimized program's score,
            output, error and feedback, with the example's inputs and labels
            (:class:`~aprompt._optimize.per_example.ExampleTable`); see :meth:`failing_examples`,
            :meth:`fixed_examples` and :meth:`broken_examples`.
    """

    program: P = attrs.field(repr=False)
    strategy: str
    score: float
    baseline_score: float
    best_choice: Mapping[str, int]
    trials: tuple[Trial, ...]
    full_evals: tuple[FullEval, ...]
    candidates: Candidates = attrs.field(repr=False)
    dropped: tuple[tuple[str, int, str], ...]
    phases: tuple[PhaseUsage, ...]
    seconds: float
    seed: int
    failures: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    stopped_by: str | None = None
    spent: Mapping[str, float] = attrs.field(factory=dict)
    pick: FinalPick | None = None
    examples: ExampleTable = attrs.field(factory=ExampleTable, repr=False)
    confirmations: tuple[FullEval, ...] = ()

    @property
    def usage(self) -> UsageSnapshot:
        total = UsageSnapshot()
        for phase in self.phases:
            total = total + phase.usage
        return total

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the optimized prompts plus the whole run record.

        Raises:
            StateError: a demo of the prompts holds a value JSON cannot keep as the prompt shows it (a
                ``datetime``, an enum member); :meth:`save` then keeps the run record without them.
        """
        return {**self._record(), "state": program_state(self.program)}

    def _record(self) -> dict[str, Any]:
        """:meth:`to_dict` without the prompts (``"state"``)."""
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "strategy": self.strategy,
            "seed": self.seed,
            "score": self.score,
            "baseline_score": self.baseline_score,
            "best_choice": dict(self.best_choice),
            "trials": [attrs.asdict(t) for t in self.trials],
            "full_evals": [attrs.asdict(f) for f in self.full_evals],
            "confirmations": [attrs.asdict(c) for c in self.confirmations],
            "candidates": self.candidates.describe(),
            "dropped": [list(d) for d in self.dropped],
            "failures": dict(self.failures),
            "phases": [
                {"phase": p.phase, "seconds": p.seconds, "started": p.started, "usage": p.usage.as_dict()}
                for p in self.phases
            ],
            "seconds": self.seconds,
            "stopped_by": self.stopped_by,
            "spent": dict(self.spent),
            "pick": attrs.asdict(self.pick) if self.pick is not None else None,
            "examples": self.examples.to_dict(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON (atomically: a crash or another save of the same path never leaves
        half a file), creating its folder if missing.

        Raises:
            StateError: the prompts cannot be saved (a demo holds a value JSON cannot keep as the prompt
                shows it, such as a ``datetime`` or an enum member). The run record (scores, trials,
                candidates, per-example outputs) is written to ``path`` all the same, without the prompts,
                so that a paid run is not lost; the error says so, and loading the file says why it holds
                no prompts.
        """
        target = Path(path)
        try:
            data = self.to_dict()
        except StateError as exc:
            problem = str(exc)
            write_text_atomically(
                target, json_text({**self._record(), "state": None, _NO_STATE: problem}, default=str)
            )
            raise StateError(
                f"{problem}; the run record was saved to {target} without the optimized prompts. The "
                "program returned holds them: pass the examples plain values (text, numbers; an enum "
                "member's .value) to save them"
            ) from None
        write_text_atomically(target, json_text(data, default=str))
        return target

    def failing_examples(self, below: float = PASS_SCORE) -> list[ExampleRow]:
        """Validation examples the returned program still fails (scored below ``below``; default: short
        of full marks), lowest score first: each with its inputs, ``labels`` (what the metric expects),
        and ``outcome`` (output, score, error, feedback) beside the unoptimized program's ``baseline``.

        Example::

            for row in result.failing_examples()[:5]:
                print(row.inputs, "->", row.outcome.output, "expected", row.labels, row.outcome.score)
        """
        return self.examples.failing(below)

    def fixed_examples(self) -> list[ExampleRow]:
        """Validation examples the returned program scores higher than the unoptimized program did."""
        return self.examples.fixed()

    def broken_examples(self) -> list[ExampleRow]:
        """Validation examples the returned program scores lower than the unoptimized program did."""
        return self.examples.broken()


def load(program: P, path: str | os.PathLike[str]) -> P:
    """Load saved prompts into ``program`` (in place) from a result file or a state file; returns it.

    Example::

        qa = aprompt.load(QA(), "optimized.json")  # a QA, typed as one
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=json_object)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to read
        raise StateError(f"cannot read saved prompts from {path}: {exc}") from None
    if isinstance(data, dict) and data.get("format") == RESULT_FORMAT:
        version = data.get("version")
        if version != RESULT_VERSION:  # a newer layout may keep its prompts otherwise than this one reads
            newer = type(version) is int and version > RESULT_VERSION
            raise StateError(
                f"{path}: result version {version!r} "
                + ("was written by a newer aprompt: upgrade aprompt to load it" if newer else "is unknown")
                + f" (this one reads version {RESULT_VERSION})"
            )
        if data.get("state") is None and isinstance(data.get(_NO_STATE), str):
            raise StateError(
                f"{path} holds a run record without its prompts, which could not be saved: {data[_NO_STATE]}"
            )
        data = data.get("state")
    refuse_keys_given_twice(data, str(path))  # in the prompts: the run record's outputs are the program's
    load_state(program, data)
    return program
