"""Demo candidates by rejection sampling (MIPRO stage 1).

Per predictor, demo set 0 is empty, set 1 holds labeled demos only (training examples that label the
predictor's outputs and give at least one of its inputs: ``max_labeled`` of them, or one per label of a
small label space with more labels than that and no more than the bound below; see
:func:`~aprompt._optimize.labeled_demos.labeled_size`), and each further set is built from a seeded
shuffle of the training set: the program runs on examples in that order and every run the metric passes
contributes its traced calls as demos, then labeled demos fill the set to its size.

Sizes: no set holds more than ``max_bootstrapped + max_labeled`` demos (``Budget.max_demos``): at most
``max_bootstrapped`` from passing runs, the rest labeled. Sets 2, 3, ... take their sizes in turn from
``set_sizes`` (:func:`size_ladder` in a run: the bound, then halves down to 1), so the search over sets is
also a search over how many demos to show, 0 (set 0) included; small models often do better with few.

Diversity: a set does not repeat an output while others are to be had, covers as many labels of a small
label space as its size allows, and free text covering the cases the training set shows
(:mod:`aprompt._optimize.labeled_demos`, :mod:`aprompt._optimize.demo_patterns`).

Runs are shared between sets, built at once: an example already run is not run again, and a set's demos
are those of one set after another (:mod:`aprompt._optimize.shared_runs`).

Examples an LM outage left unscored are run again once the LM answers (:mod:`aprompt._optimize.outage`),
so the demo sets are those a run on a working endpoint finds.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial

import attrs

from aprompt._optimize.demo_patterns import covering_order as covering_order
from aprompt._optimize.demo_patterns import demo_patterns as demo_patterns
from aprompt._optimize.evaluate import Evaluation, ExampleResult, Metric, evaluate_reporting
from aprompt._optimize.examples import Example
from aprompt._optimize.labeled_demos import MAX_CLASSES as MAX_CLASSES
from aprompt._optimize.labeled_demos import DemoSet as DemoSet
from aprompt._optimize.labeled_demos import demo_key, example_label, label_quota, shown_labels
from aprompt._optimize.labeled_demos import labeled_demo as labeled_demo
from aprompt._optimize.labeled_demos import labeled_only_set as labeled_only_set
from aprompt._optimize.labeled_demos import labeled_set as labeled_set
from aprompt._optimize.labeled_demos import labeled_size as labeled_size
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt._optimize.shared_runs import SharedRuns, collect_passing, first_wave
from aprompt._slots import Limiter
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo

logger = logging.getLogger("aprompt")


@attrs.frozen
class BootstrapResult:
    """Demo sets per predictor name (index 0 empty, 1 labeled-only, then bootstrapped)."""

    demo_sets: Mapping[str, tuple[DemoSet, ...]]
    runs: int
    passed: int
    failures: Mapping[str, str] = attrs.field(factory=dict)


def bootstrap_runs(n_train: int, n_sets: int, max_bootstrapped: int) -> int:
    """Program runs of :func:`bootstrap_demo_sets` when enough runs pass: the first wave of each
    bootstrapped set (sets 2 .. ``n_sets - 1``), no more than the trainset; failing runs make a set walk
    on."""
    return min(n_train, max(0, n_sets - 2) * first_wave(max_bootstrapped))


def size_ladder(bound: int) -> tuple[int, ...]:
    """Sizes of the bootstrapped sets in turn: ``bound``, then halves down to 1 (8 → 8, 4, 2, 1)."""
    sizes: list[int] = []
    size = bound
    while size >= 1:
        sizes.append(size)
        size //= 2
    return tuple(sizes) or (0,)


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
    concurrency: int | Limiter = 64,
    temperature: float | None = None,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
    set_sizes: Sequence[int] | None = None,
    on_set: Callable[[int, Mapping[str, DemoSet]], None] | None = None,
    labeled_sets: Mapping[str, DemoSet] | None = None,
) -> BootstrapResult:
    """Build ``n_sets`` demo sets per predictor, none larger than ``max_bootstrapped + max_labeled``.

    Set ``k >= 2`` holds ``set_sizes[(k - 2) % len(set_sizes)]`` demos (capped by the bound; default:
    every set at the bound): up to ``max_bootstrapped`` of them from passing runs, the rest labeled.

    ``teacher_lm`` (a stronger model) runs the program when given, else ``lm``. With ``temperature`` set,
    set ``k`` samples with rollout ``k`` so sets differ even on the same examples, and re-runs replay
    from the cache. ``outage`` says how long to wait out an LM outage (default
    :data:`~aprompt._optimize.outage.DEFAULT_OUTAGE_TOLERANCE` seconds).

    ``on_set(k, sets)`` is told each bootstrapped set ``k`` (per predictor) as soon as it is built,
    before the others are and before the runs no set reads (the rest of a wave) end.

    ``labeled_sets``: set 1 per predictor name when the caller built it already (with
    :func:`labeled_only_set` of the same trainset and bounds); else it is built here.

    Raises:
        EndpointDownError: the LM stayed down longer than ``outage.tolerance``; nothing is returned.
    """
    guard = OutageGuard.for_program(predictors, teacher_lm or lm, outage)
    bound = max_bootstrapped + max_labeled
    sizes = [min(bound, max(0, s)) for s in set_sizes] if set_sizes else [bound]
    # The quota counts the labels the demos show: a note beside the answer would make each one distinct.
    label_of = partial(example_label, names=shown_labels(predictors, trainset))
    labels = [label_of(e) for e in trainset]
    sets: dict[str, list[DemoSet]] = {name: [DemoSet(())] for name, _ in predictors}
    if n_sets >= 2:
        for name, predictor in predictors:
            given = labeled_sets.get(name) if labeled_sets is not None else None
            if given is None:
                given = labeled_only_set(predictor, trainset, max_labeled, bound)
            sets[name].append(given)
    orders: dict[int, list[Example]] = {}
    found: dict[int, list[ExampleResult]] = {}

    async def build(set_index: int, want: int) -> None:
        order = orders[set_index] = list(trainset)
        random.Random(f"{seed}:demo-set:{set_index}").shuffle(order)
        rollout = set_index if temperature is not None else 0

        async def run(examples: Sequence[Example]) -> Evaluation:
            # The run's arguments were checked once by optimize(): not again for each example.
            return await evaluate_reporting(
                program,
                examples,
                metric,
                lm=teacher_lm or lm,
                concurrency=concurrency,
                collect_traces=True,
                rollout=rollout,
                lm_params={"temperature": temperature} if temperature is not None else None,
            )

        found[set_index] = await collect_passing(
            order,
            runs,
            partial(_run_one, run, guard),
            rollout=rollout,
            want=want,
            quota=label_quota(labels, want),
            threshold=threshold,
            label_of=label_of,
        )
        if on_set is not None:
            on_set(set_index, {name: built(set_index, name, predictor) for name, predictor in predictors})

    made: dict[tuple[int, str], DemoSet] = {}

    def built(set_index: int, name: str, predictor: Predict) -> DemoSet:
        # Built once: ``on_set`` is told the very set the result holds (its labeled part walks the
        # trainset, a cost per set, not per read).
        if (set_index, name) not in made:
            size = sizes[(set_index - 2) % len(sizes)]
            want = min(size, max_bootstrapped)
            extra = min(max_labeled, size - want)
            made[set_index, name] = _bootstrapped_set(
                name, predictor, found[set_index], orders[set_index], want, extra
            )
        return made[set_index, name]

    async with plain_errors_task_group() as own_runs:
        runs = SharedRuns(own_runs)
        async with plain_errors_task_group() as group:
            for set_index in range(2, n_sets):
                group.start_soon(build, set_index, min(sizes[(set_index - 2) % len(sizes)], max_bootstrapped))
    for set_index in range(2, n_sets):
        for name, predictor in predictors:
            sets[name].append(built(set_index, name, predictor))
    done = runs.in_order()
    warn_uncalled(predictors, list(done.values()))
    passed = sum(1 for r in done.values() if r.score is not None and r.score >= threshold)
    failures = {f"{eid}@{rollout}": r.error for (eid, rollout), r in done.items() if r.error}
    return BootstrapResult({name: tuple(s) for name, s in sets.items()}, len(done), passed, failures)


def warn_uncalled(predictors: Sequence[tuple[str, Predict]], done: Sequence[ExampleResult]) -> None:
    """Log a warning naming the predictors that no finished run called (an object holding predictors its
    entry point never calls): the search still picks prompts for them, by scores they cannot change."""
    finished = [result for result in done if result.error is None]
    called = {entry.predictor_name for result in finished for entry in result.trace}
    uncalled = [name for name, _ in predictors if name not in called]
    if finished and uncalled:
        logger.warning(
            "aprompt: predictor(s) %s of the program were not called in any of its %d bootstrap run(s): "
            "their prompts are tuned all the same, by scores they do not change, and the result may give "
            "them a prompt picked by chance. Optimize an object holding only the predictors the program "
            "calls (or check why the program does not call them)",
            uncalled,
            len(finished),
        )


async def _run_one(
    run: Callable[[Sequence[Example]], Awaitable[Evaluation]], guard: OutageGuard, example: Example
) -> ExampleResult:
    # A failure here fails the whole bootstrap, and cancels the sets waiting for this run.
    return (await guard.evaluate(run, [example], "a bootstrap run")).results[0]


def _bootstrapped_set(
    name: str,
    predictor: Predict,
    passing: Sequence[ExampleResult],
    order: Sequence[Example],
    want: int,
    n_labeled: int,
) -> DemoSet:
    """Up to ``want`` demos from the passing runs' traces, then ``n_labeled`` labeled demos (from
    ``order``, the examples not used yet), outputs not repeated where others are to be had."""
    demos: list[Demo] = []
    ids: list[str] = []
    shown: set[str] = set()
    for result in passing:
        entry = next((e for e in result.trace if e.predictor_name == name), None)
        # A run of a copy of an example shows the very demo its original's run did: shown once.
        if (
            entry is not None
            and len(demos) < want
            and (key := demo_key(demo := entry.as_demo())) not in shown
        ):
            shown.add(key)
            demos.append(demo)
            ids.append(result.example_id)
    n_boot = len(demos)
    used = set(ids)
    extra = labeled_set(predictor, [e for e in order if e.id not in used], n_labeled, demos)
    return DemoSet((*demos, *extra.demos), n_boot, (*ids, *extra.source_ids))
