"""Demo candidates by rejection sampling (MIPRO stage 1).

Per predictor, demo set 0 is empty, set 1 holds labeled demos only (training examples whose fields cover
the predictor's signature), and each further set is built from a seeded shuffle of the training set: the
program runs on examples in that order and every run the metric passes contributes its traced calls as
demos, until ``max_bootstrapped`` are found, then labeled demos fill up to ``max_labeled``.

Runs are shared between sets: an example already run (same teacher, rollout and parameters) is not run
again, so later sets cost only the examples no earlier set needed.

Examples an LM outage left unscored are run again once the LM answers (:mod:`aprompt.optimize.outage`),
so the demo sets are those a run on a working endpoint finds.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from aprompt.lm.types import LM
from aprompt.optimize.evaluate import Evaluation, ExampleResult, Metric, evaluate
from aprompt.optimize.examples import Example
from aprompt.optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo


@attrs.frozen
class DemoSet:
    """Demos for one predictor; ``bootstrapped`` of them came from passing program runs."""

    demos: tuple[Demo, ...]
    bootstrapped: int = 0
    source_ids: tuple[str, ...] = ()


@attrs.frozen
class BootstrapResult:
    """Demo sets per predictor name (index 0 empty, 1 labeled-only, then bootstrapped)."""

    demo_sets: Mapping[str, tuple[DemoSet, ...]]
    runs: int
    passed: int
    failures: Mapping[str, str] = attrs.field(factory=dict)


def labeled_demo(predictor: Predict, example: Example) -> Demo | None:
    """The example as a demo for ``predictor`` when it has all of its input and output fields."""
    fields = example.fields()
    names = (*predictor.signature.input_names, *predictor.signature.output_names)
    required = [n for n in names if n != "reasoning"]
    if all(n in fields for n in required):
        return Demo({n: fields[n] for n in names if n in fields})
    return None


def labeled_set(predictor: Predict, examples: Sequence[Example], limit: int) -> DemoSet:
    demos: list[Demo] = []
    ids: list[str] = []
    for example in examples:
        if len(demos) >= limit:
            break
        demo = labeled_demo(predictor, example)
        if demo is not None:
            demos.append(demo)
            ids.append(example.id)
    return DemoSet(tuple(demos), 0, tuple(ids))


async def bootstrap_demo_sets(
    program: object,
    predictors: Sequence[tuple[str, Predict]],
    trainset: Sequence[Example],
    metric: Metric,
    *,
    n_sets: int,
    max_bootstrapped: int = 4,
    max_labeled: int = 4,
    seed: int = 0,
    teacher_lm: LM | None = None,
    lm: LM | None = None,
    threshold: float = 1.0,
    concurrency: int = 64,
    temperature: float | None = None,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
) -> BootstrapResult:
    """Build ``n_sets`` demo sets per predictor.

    ``teacher_lm`` (a stronger model) runs the program when given, else ``lm``. With ``temperature`` set,
    set ``k`` samples with rollout ``k`` so sets differ even on the same examples, and re-runs replay
    from the cache. ``outage`` says how long to wait out an LM outage (default
    :data:`~aprompt.optimize.outage.DEFAULT_OUTAGE_TOLERANCE` seconds).

    Raises:
        EndpointDownError: the LM stayed down longer than ``outage.tolerance``; nothing is returned.
    """
    guard = OutageGuard.for_program(predictors, teacher_lm or lm, outage)
    runs: dict[tuple[str, int], ExampleResult] = {}
    sets: dict[str, list[DemoSet]] = {name: [DemoSet(())] for name, _ in predictors}
    if n_sets >= 2:
        for name, predictor in predictors:
            sets[name].append(labeled_set(predictor, trainset, max_labeled))
    for set_index in range(2, n_sets):
        order = list(trainset)
        random.Random(f"{seed}:demo-set:{set_index}").shuffle(order)
        rollout = set_index if temperature is not None else 0
        found = await _collect_passing(
            program,
            order,
            metric,
            runs,
            rollout=rollout,
            lm=teacher_lm or lm,
            guard=guard,
            want=max_bootstrapped,
            threshold=threshold,
            concurrency=concurrency,
            lm_params={"temperature": temperature} if temperature is not None else None,
        )
        for name, predictor in predictors:
            sets[name].append(_bootstrapped_set(name, predictor, found, order, max_bootstrapped, max_labeled))
    passed = sum(1 for r in runs.values() if r.score is not None and r.score >= threshold)
    failures = {f"{eid}@{rollout}": r.error for (eid, rollout), r in runs.items() if r.error}
    return BootstrapResult({name: tuple(s) for name, s in sets.items()}, len(runs), passed, failures)


async def _collect_passing(
    program: object,
    order: Sequence[Example],
    metric: Metric,
    runs: dict[tuple[str, int], ExampleResult],
    *,
    rollout: int,
    lm: LM | None,
    guard: OutageGuard,
    want: int,
    threshold: float,
    concurrency: int,
    lm_params: Mapping[str, Any] | None,
) -> list[ExampleResult]:
    """Walk ``order`` in concurrent waves until ``want`` passing runs are found (or it ends)."""
    passing: list[ExampleResult] = []
    position = 0
    wave = max(want * 2, 4)
    while len(passing) < want and position < len(order):
        chunk = order[position : position + wave]
        position += wave
        todo = [e for e in chunk if (e.id, rollout) not in runs]
        if todo:

            async def run(examples: Sequence[Example]) -> Evaluation:
                return await evaluate(
                    program,
                    examples,
                    metric,
                    lm=lm,
                    concurrency=concurrency,
                    collect_traces=True,
                    rollout=rollout,
                    lm_params=lm_params,
                )

            evaluation = await guard.evaluate(run, todo, "the bootstrap runs")
            for result in evaluation.results:
                runs[(result.example_id, rollout)] = result
        for example in chunk:
            result = runs[(example.id, rollout)]
            if result.score is not None and result.score >= threshold and result.trace:
                passing.append(result)
                if len(passing) >= want:
                    break
    return passing


def _bootstrapped_set(
    name: str,
    predictor: Predict,
    passing: Sequence[ExampleResult],
    order: Sequence[Example],
    max_bootstrapped: int,
    max_labeled: int,
) -> DemoSet:
    demos: list[Demo] = []
    ids: list[str] = []
    for result in passing:
        entry = next((e for e in result.trace if e.predictor_name == name), None)
        if entry is not None and len(demos) < max_bootstrapped:
            demos.append(entry.as_demo())
            ids.append(result.example_id)
    n_boot = len(demos)
    used = set(ids)
    extra = labeled_set(predictor, [e for e in order if e.id not in used], max_labeled)
    return DemoSet((*demos, *extra.demos), n_boot, (*ids, *extra.source_ids))
