"""Demo candidates by rejection sampling (MIPRO stage 1).

Per predictor, demo set 0 is empty, set 1 holds labeled demos only (training examples whose fields cover
the predictor's signature, at most ``max_labeled``), and each further set is built from a seeded shuffle
of the training set: the program runs on examples in that order and every run the metric passes
contributes its traced calls as demos, then labeled demos fill the set to its size.

Sizes: no set holds more than ``max_bootstrapped + max_labeled`` demos (``Budget.max_demos``): at most
``max_bootstrapped`` from passing runs, the rest labeled. Sets 2, 3, ... take their sizes in turn from
``set_sizes`` (:func:`size_ladder` in a run: the bound, then halves down to 1), so the search over sets is
also a search over how many demos to show, 0 (set 0) included; small models often do better with few.

Diversity: a set does not repeat an output while others are to be had. Outputs are the example's labels
(a bootstrapped demo's run passed on them) or, for a labeled demo, the predictor's output fields. When the
training labels look like a small label space (:func:`label_quota`: at most half as many distinct values
as examples, and at most :data:`MAX_CLASSES`), each label may appear ``ceil(size / labels)`` times, so a
set covers as many labels as its size allows; otherwise each output once. Examples over the quota only
fill a set the walk could not fill otherwise.

Free-text outputs have no label space to cover, but they have patterns: the ways an output departs from
its inputs ("does not love" / "do not love" / "has not eaten" for sentence negation). Labeled demos are
then chosen to cover the patterns the training set shows (:func:`covering_order`), as a hand-picked set
would show one example of each case, instead of the first examples in order, which may all show one
case (a small model then copies that one case everywhere: measured on the demo's task, sets covering the
four cases scored 0.70-0.83 held-out against 0.32-0.63 for sets that did not).

Runs are shared between sets: an example already run (same teacher, rollout and parameters) is not run
again, so later sets cost only the examples no earlier set needed. The sets are built at once, each walking
its own order: a set waits for an example another set is running instead of running it again. A set's
demos depend only on its order and on the examples' results, so they are those of one set after another.

Examples an LM outage left unscored are run again once the LM answers (:mod:`aprompt._optimize.outage`),
so the demo sets are those a run on a working endpoint finds.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import attrs

from aprompt._optimize.evaluate import Evaluation, ExampleResult, Metric, evaluate
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo

T = TypeVar("T")


#: The most distinct labels a label space may have to be treated as classes (covered in every set).
MAX_CLASSES = 32


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


def size_ladder(bound: int) -> tuple[int, ...]:
    """Sizes of the bootstrapped sets in turn: ``bound``, then halves down to 1 (8 → 8, 4, 2, 1)."""
    sizes: list[int] = []
    size = bound
    while size >= 1:
        sizes.append(size)
        size //= 2
    return tuple(sizes) or (0,)


def example_label(example: Example) -> tuple[tuple[str, str], ...]:
    """The example's labels as a hashable key (what a passing run's demos say)."""
    return tuple(sorted((k, str(v)) for k, v in example.labels.items()))


def demo_output(predictor: Predict, demo: Demo) -> tuple[tuple[str, str], ...]:
    """A demo's output fields as a hashable key."""
    return tuple(
        (n, str(demo[n])) for n in predictor.signature.output_names if n != "reasoning" and n in demo
    )


def label_quota(labels: Sequence[Hashable], size: int) -> int:
    """How often one label may appear in a set of ``size``: ``ceil(size / classes)`` for a small label
    space (see the module doc), else 1 (distinct outputs)."""
    distinct = len(set(labels))
    if distinct and distinct <= MAX_CLASSES and distinct * 2 <= len(labels):
        return max(1, math.ceil(size / distinct))
    return 1


def diverse(
    items: Sequence[T], key: Callable[[T], Hashable], size: int, quota: int, taken: Sequence[Hashable] = ()
) -> list[T]:
    """Up to ``size`` of ``items`` in order, each key at most ``quota`` times (counting the keys
    ``taken`` already); then, only when the set is still short, the items over the quota in order."""
    chosen: list[T] = []
    spare: list[T] = []
    counts: Counter[Hashable] = Counter(taken)
    for item in items:
        if len(chosen) >= size:
            break
        k = key(item)
        if counts[k] < quota:
            counts[k] += 1
            chosen.append(item)
        else:
            spare.append(item)
    return chosen + spare[: max(0, size - len(chosen))]


#: How close to the largest gain an item's gain must be for :func:`covering_order` to take it in turn.
NEAR_BEST = 0.75

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def _words(value: object) -> list[str]:
    return _WORD.findall(str(value).lower())


def demo_patterns(predictor: Predict, demo: Demo) -> frozenset[str]:
    """What a demo shows beyond its inputs: the words and adjacent word pairs of its output fields that
    its input fields lack (for "the boy loves flowers" -> "the boy does not love flowers": ``does``,
    ``not``, ``love``, ``does not``, ``not love``, ...)."""
    seen: set[str] = set()
    seen_pairs: set[tuple[str, str]] = set()
    for name in predictor.signature.input_names:
        if name in demo:
            words = _words(demo[name])
            seen.update(words)
            seen_pairs.update(itertools.pairwise(words))
    patterns: set[str] = set()
    for name in predictor.signature.output_names:
        if name == "reasoning" or name not in demo:
            continue
        words = _words(demo[name])
        patterns.update(w for w in words if w not in seen)
        patterns.update(f"{a} {b}" for a, b in itertools.pairwise(words) if (a, b) not in seen_pairs)
    return frozenset(patterns)


def covering_order(patterns: Sequence[frozenset[str]], size: int, covered: Iterable[str] = ()) -> list[int]:
    """Indices of ``patterns`` in the order a set of ``size`` should take them: greedily the item whose
    patterns not yet covered weigh most, then the rest in their order.

    A pattern weighs the number of items that show it, so the cases the data shows often are covered
    first; a pattern of one item (a content word) or of every item (shared by all, it tells no case from
    another) weighs nothing. Once the cases are covered, the items showing the most patterns not yet seen
    follow; when every pattern is covered a new round starts. The earliest item within
    :data:`NEAR_BEST` of the largest gain is taken, so a shuffled order gives other examples of the
    same cases.
    """
    counts = Counter(p for item in patterns for p in item)
    weight = {p: c for p, c in counts.items() if 1 < c < len(patterns)}
    done = set(covered) & weight.keys()
    left = list(range(len(patterns)))
    order: list[int] = []
    while left and len(order) < size:
        gains = [sum(weight[p] for p in patterns[i] if p in weight and p not in done) for i in left]
        best = max(gains)
        if best == 0 and done:
            done = set()  # every case is shown: a new round
            continue
        if best == 0:
            break  # no patterns at all: the order as given
        # The earliest item near the best gain, not the single best: sets drawn from different orders
        # then show different examples of the same cases.
        pick = left.pop(next(k for k, gain in enumerate(gains) if gain >= NEAR_BEST * best))
        order.append(pick)
        done.update(p for p in patterns[pick] if p in weight)
    return order + left


def labeled_set(
    predictor: Predict, examples: Sequence[Example], limit: int, taken: Sequence[Demo] = ()
) -> DemoSet:
    """Up to ``limit`` labeled demos from ``examples``, diverse outputs first (module doc), counting the
    outputs of the demos ``taken`` into the set already: a small label space covered label by label,
    free text covering its patterns (:func:`covering_order`), the examples' order breaking ties."""
    pairs = [(e, d) for e in examples if (d := labeled_demo(predictor, e)) is not None]
    quota = label_quota([demo_output(predictor, d) for _, d in pairs], limit + len(taken))
    if quota == 1 and pairs:
        covered = [p for demo in taken for p in demo_patterns(predictor, demo)]
        order = covering_order([demo_patterns(predictor, d) for _, d in pairs], limit, covered)
        pairs = [pairs[i] for i in order]
    outputs = [demo_output(predictor, d) for d in taken]
    picked = diverse(pairs, lambda pair: demo_output(predictor, pair[1]), limit, quota, outputs)
    return DemoSet(tuple(d for _, d in picked), 0, tuple(e.id for e, _ in picked))


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
    concurrency: int | anyio.CapacityLimiter = 64,
    temperature: float | None = None,
    outage: OutagePolicy = DEFAULT_OUTAGE_POLICY,
    set_sizes: Sequence[int] | None = None,
) -> BootstrapResult:
    """Build ``n_sets`` demo sets per predictor, none larger than ``max_bootstrapped + max_labeled``.

    Set ``k >= 2`` holds ``set_sizes[(k - 2) % len(set_sizes)]`` demos (capped by the bound; default:
    every set at the bound): up to ``max_bootstrapped`` of them from passing runs, the rest labeled.

    ``teacher_lm`` (a stronger model) runs the program when given, else ``lm``. With ``temperature`` set,
    set ``k`` samples with rollout ``k`` so sets differ even on the same examples, and re-runs replay
    from the cache. ``outage`` says how long to wait out an LM outage (default
    :data:`~aprompt._optimize.outage.DEFAULT_OUTAGE_TOLERANCE` seconds).

    Raises:
        EndpointDownError: the LM stayed down longer than ``outage.tolerance``; nothing is returned.
    """
    guard = OutageGuard.for_program(predictors, teacher_lm or lm, outage)
    bound = max_bootstrapped + max_labeled
    sizes = [min(bound, max(0, s)) for s in set_sizes] if set_sizes else [bound]
    labels = [example_label(e) for e in trainset]
    runs = _SharedRuns()
    sets: dict[str, list[DemoSet]] = {name: [DemoSet(())] for name, _ in predictors}
    if n_sets >= 2:
        for name, predictor in predictors:
            sets[name].append(labeled_set(predictor, trainset, max_labeled))
    orders: dict[int, list[Example]] = {}
    found: dict[int, list[ExampleResult]] = {}

    async def build(set_index: int, want: int) -> None:
        order = orders[set_index] = list(trainset)
        random.Random(f"{seed}:demo-set:{set_index}").shuffle(order)
        rollout = set_index if temperature is not None else 0
        found[set_index] = await _collect_passing(
            program,
            order,
            metric,
            runs,
            rollout=rollout,
            lm=teacher_lm or lm,
            guard=guard,
            want=want,
            quota=label_quota(labels, want),
            threshold=threshold,
            concurrency=concurrency,
            lm_params={"temperature": temperature} if temperature is not None else None,
        )

    async with plain_errors_task_group() as group:
        for set_index in range(2, n_sets):
            group.start_soon(build, set_index, min(sizes[(set_index - 2) % len(sizes)], max_bootstrapped))
    for set_index in range(2, n_sets):
        size = sizes[(set_index - 2) % len(sizes)]
        want = min(size, max_bootstrapped)
        for name, predictor in predictors:
            extra = min(max_labeled, size - want)
            sets[name].append(
                _bootstrapped_set(name, predictor, found[set_index], orders[set_index], want, extra)
            )
    done = runs.in_order()
    passed = sum(1 for r in done.values() if r.score is not None and r.score >= threshold)
    failures = {f"{eid}@{rollout}": r.error for (eid, rollout), r in done.items() if r.error}
    return BootstrapResult({name: tuple(s) for name, s in sets.items()}, len(done), passed, failures)


class _SharedRuns:
    """The program runs of every set, by (example id, rollout): done, or in flight for one set while
    others wait for them."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, int], ExampleResult] = {}
        self._running: dict[tuple[str, int], anyio.Event] = {}
        self._started: list[tuple[str, int]] = []  # in the order the runs were started

    def claim(self, keys: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        """Of ``keys``, those neither done nor running, marked running (the caller runs them)."""
        mine = []
        for key in keys:
            if key not in self._done and key not in self._running:
                self._running[key] = anyio.Event()
                self._started.append(key)
                mine.append(key)
        return mine

    def record(self, key: tuple[str, int], result: ExampleResult) -> None:
        self._done[key] = result
        event = self._running.pop(key, None)  # None: a second example with the same id
        if event is not None:
            event.set()

    async def result(self, key: tuple[str, int]) -> ExampleResult:
        """The run's result, once the set running it has it."""
        event = self._running.get(key)
        if event is not None:
            await event.wait()
        return self._done[key]

    def in_order(self) -> dict[tuple[str, int], ExampleResult]:
        """Every run done, in the order they were started."""
        return {key: self._done[key] for key in self._started if key in self._done}


async def _collect_passing(
    program: object,
    order: Sequence[Example],
    metric: Metric,
    runs: _SharedRuns,
    *,
    rollout: int,
    lm: LM | None,
    guard: OutageGuard,
    want: int,
    quota: int,
    threshold: float,
    concurrency: int | anyio.CapacityLimiter,
    lm_params: Mapping[str, Any] | None,
) -> list[ExampleResult]:
    """Walk ``order`` in concurrent waves until ``want`` passing runs with labels within ``quota`` are
    found (or it ends; then passing runs over the quota fill up)."""
    passing: list[ExampleResult] = []
    spare: list[ExampleResult] = []
    counts: Counter[Hashable] = Counter()
    position = 0
    wave = max(want * 2, 4)
    while len(passing) < want and position < len(order):
        chunk = order[position : position + wave]
        position += wave
        claimed = set(runs.claim([(e.id, rollout) for e in chunk]))
        todo = [e for e in chunk if (e.id, rollout) in claimed]
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

            # A failure here fails the whole bootstrap, and cancels the sets waiting for these runs.
            evaluation = await guard.evaluate(run, todo, "the bootstrap runs")
            for result in evaluation.results:
                runs.record((result.example_id, rollout), result)
        for example in chunk:
            result = await runs.result((example.id, rollout))
            if result.score is not None and result.score >= threshold and result.trace:
                label = example_label(example)
                if counts[label] >= quota:
                    spare.append(result)
                    continue
                counts[label] += 1
                passing.append(result)
                if len(passing) >= want:
                    break
    return passing + spare[: max(0, want - len(passing))]


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
    for result in passing:
        entry = next((e for e in result.trace if e.predictor_name == name), None)
        if entry is not None and len(demos) < want:
            demos.append(entry.as_demo())
            ids.append(result.example_id)
    n_boot = len(demos)
    used = set(ids)
    extra = labeled_set(predictor, [e for e in order if e.id not in used], n_labeled, demos)
    return DemoSet((*demos, *extra.demos), n_boot, (*ids, *extra.source_ids))
