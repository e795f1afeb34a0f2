"""Demo candidates by rejection sampling (MIPRO stage 1).

Per predictor, demo set 0 is empty, set 1 holds labeled demos only (training examples that label the
predictor's outputs and give at least one of its inputs: ``max_labeled`` of them, or one per label of a
small label space with more labels than that and no more than the bound below; see
:func:`labeled_size`), and each further set is built from a seeded shuffle of the training set: the
program runs on examples in that order and every run the metric passes contributes its traced calls as
demos, then labeled demos fill the set to its size.

Sizes: no set holds more than ``max_bootstrapped + max_labeled`` demos (``Budget.max_demos``): at most
``max_bootstrapped`` from passing runs, the rest labeled. Sets 2, 3, ... take their sizes in turn from
``set_sizes`` (:func:`size_ladder` in a run: the bound, then halves down to 1), so the search over sets is
also a search over how many demos to show, 0 (set 0) included; small models often do better with few.

Diversity: a set does not repeat an output while others are to be had. Outputs are the example's labels
(a bootstrapped demo's run passed on them) or, for a labeled demo, the predictor's output fields. When the
training labels look like a small label space (:func:`label_quota`: at most half as many distinct values
as examples, and at most :data:`MAX_CLASSES`), each label may appear ``ceil(size / labels)`` times, so a
set covers as many labels as its size allows; otherwise each output once. Examples over the quota only
fill a set the walk could not fill otherwise. A set never shows one demo twice (a trainset holding an
example under two ids gives two equal demos).

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
A set reads its results in order as they come (:func:`_collect_passing`): it is built once the examples
read give its demos, and starts its next wave once the wave cannot give them, so neither waits for the
slowest answer of a wave it does not need; its waves, and so the runs, are those of waves that each wait.

Examples an LM outage left unscored are run again once the LM answers (:mod:`aprompt._optimize.outage`),
so the demo sets are those a run on a working endpoint finds.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from functools import partial
from typing import TypeVar

import anyio
import anyio.abc
import attrs

from aprompt._optimize.evaluate import Evaluation, ExampleResult, Metric, evaluate
from aprompt._optimize.examples import Example
from aprompt._optimize.outage import DEFAULT_OUTAGE_POLICY, OutageGuard, OutagePolicy
from aprompt._slots import Limiter
from aprompt._taskgroups import plain_errors_task_group
from aprompt.lm.types import LM
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo
from aprompt.run.journal import journaled_text

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
    """The example as a demo for ``predictor`` when it has all of its output fields and at least one of
    its input fields: the fields it has of the signature (the last stage of a pipeline shows the
    program's inputs and the final answer, as a hand-written prompt would, without the intermediate
    fields no example labels)."""
    fields = example.fields()
    outputs = [n for n in predictor.signature.output_names if n != "reasoning"]
    inputs = predictor.signature.input_names
    if outputs and all(n in fields for n in outputs) and any(n in fields for n in inputs):
        names = (*inputs, *predictor.signature.output_names)
        return Demo({n: fields[n] for n in names if n in fields})
    return None


def first_wave(want: int) -> int:
    """How many examples a set runs at first to find ``want`` passing runs: twice as many, at least 4
    (none for none)."""
    return max(want * 2, 4) if want > 0 else 0


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


def example_label(example: Example) -> tuple[tuple[str, str], ...]:
    """The example's labels as a hashable key (what a passing run's demos say)."""
    return tuple(sorted((k, str(v)) for k, v in example.labels.items()))


def demo_output(predictor: Predict, demo: Demo) -> tuple[tuple[str, str], ...]:
    """A demo's output fields as a hashable key."""
    names = predictor.signature.output_names
    return tuple([(n, str(demo[n])) for n in names if n != "reasoning" and n in demo])


def label_space(labels: Sequence[Hashable]) -> int:
    """The number of classes when ``labels`` look like a small label space (at most half as many distinct
    values as labels, and at most :data:`MAX_CLASSES`), else 0 (free outputs)."""
    distinct = len(set(labels))
    return distinct if distinct and distinct <= MAX_CLASSES and distinct * 2 <= len(labels) else 0


def label_quota(labels: Sequence[Hashable], size: int) -> int:
    """How often one label may appear in a set of ``size``: ``ceil(size / classes)`` for a small label
    space (see the module doc), else 1 (distinct outputs)."""
    classes = label_space(labels)
    return max(1, math.ceil(size / classes)) if classes else 1


def labeled_size(predictor: Predict, examples: Sequence[Example], max_labeled: int, bound: int) -> int:
    """How many demos the labeled-only set holds: ``max_labeled``; or, when the examples label
    ``predictor``'s outputs with a small label space of more classes than that but no more than
    ``bound`` (the most demos a set holds), one per class, as a hand-written prompt for a classifier
    shows each class. A label space the bound cannot cover (the answers of a counting task: 14 distinct
    numbers in 30 examples) keeps ``max_labeled``. ``max_labeled`` 0 keeps labeled demos out.

    Measured on the embedded model (intent recognition, 7 intents, 200 held-out examples, the
    instruction as written): the 7 labeled demos of every intent scored 0.290, 4 of them 0.221; in its
    two-stage version 0.246 against 0.120 (``bench/results/quality_labeled_coverage.md``).
    """
    if max_labeled <= 0:
        return 0
    outputs = [demo_output(predictor, d) for e in examples if (d := labeled_demo(predictor, e)) is not None]
    classes = label_space(outputs)
    return max(max_labeled, classes) if classes <= bound else max_labeled


def diverse(
    items: Sequence[T], key: Callable[[T], Hashable], size: int, quota: int, taken: Sequence[Hashable] = ()
) -> list[T]:
    """Up to ``size`` of ``items`` in order, each key at most ``quota`` times (counting the keys
    ``taken`` already), every key once before any twice (and so on up to ``quota``); then, only when
    the set is still short, the items over the quota in order."""
    keys = [key(item) for item in items]
    counts: Counter[Hashable] = Counter(taken)
    picked: set[int] = set()
    # In rounds: a walk taking each key only once more would fill the set with the first keys in
    # order twice over before a later key is shown once (greet, greet, leave, leave; no "ask").
    for level in range(1, quota + 1):
        for index, k in enumerate(keys):
            if len(picked) >= size:
                break
            if index not in picked and counts[k] < level:
                counts[k] += 1
                picked.add(index)
    spare = [i for i in range(len(items)) if i not in picked][: max(0, size - len(picked))]
    return [items[i] for i in sorted(picked)] + [items[i] for i in spare]


#: How close to the largest gain an item's gain must be for :func:`covering_order` to take it in turn.
NEAR_BEST = 0.75

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def _words(value: object) -> list[str]:
    return _WORD.findall(journaled_text(value).lower())


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
        patterns.update([w for w in words if w not in seen])
        patterns.update([f"{a} {b}" for a, b in itertools.pairwise(words) if (a, b) not in seen_pairs])
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
        gains = [sum([weight[p] for p in patterns[i] if p in weight and p not in done]) for i in left]
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


def demo_key(demo: Demo) -> str:
    """A demo's fields as canonical text (equal demos have equal keys)."""
    return json.dumps(demo.to_dict(), sort_keys=True, default=str, ensure_ascii=False)


def labeled_set(
    predictor: Predict, examples: Sequence[Example], limit: int, taken: Sequence[Demo] = ()
) -> DemoSet:
    """Up to ``limit`` labeled demos from ``examples``, diverse outputs first (module doc), counting the
    outputs of the demos ``taken`` into the set already: a small label space covered label by label,
    free text covering its patterns (:func:`covering_order`), the examples' order breaking ties."""
    if limit <= 0:
        # Most bootstrapped sets have no room for labeled demos (sizes at or under the bootstrapped
        # bound): walking the trainset for none cost seconds per set on a large one, on the event loop.
        return DemoSet(())
    # (example, demo, the demo's output key), the key made once per demo; a demo the set shows
    # already (a trainset holding an example twice) is left out: a copy tells the model nothing more.
    shown = {demo_key(d) for d in taken}
    items = []
    for e in examples:
        if (d := labeled_demo(predictor, e)) is not None and (k := demo_key(d)) not in shown:
            shown.add(k)
            items.append((e, d, demo_output(predictor, d)))
    quota = label_quota([output for _, _, output in items], limit + len(taken))
    if quota == 1 and items:
        covered = [p for demo in taken for p in demo_patterns(predictor, demo)]
        order = covering_order([demo_patterns(predictor, d) for _, d, _ in items], limit, covered)
        items = [items[i] for i in order]
    outputs = [demo_output(predictor, d) for d in taken]
    picked = diverse(items, operator.itemgetter(2), limit, quota, outputs)
    return DemoSet(tuple(d for _, d, _ in picked), 0, tuple(e.id for e, _, _ in picked))


def labeled_only_set(
    predictor: Predict, examples: Sequence[Example], max_labeled: int, bound: int
) -> DemoSet:
    """Demo set 1: labeled demos only, as many as :func:`labeled_size` says (the run's bootstrap and
    the hand-written prompt evaluated before it ends both build it here, so they show the same demos)."""
    return labeled_set(predictor, examples, labeled_size(predictor, examples, max_labeled, bound))


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
    labels = [example_label(e) for e in trainset]
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
            return await evaluate(
                program,
                examples,
                metric,
                lm=teacher_lm or lm,
                concurrency=concurrency,
                collect_traces=True,
                rollout=rollout,
                lm_params={"temperature": temperature} if temperature is not None else None,
            )

        found[set_index] = await _collect_passing(
            order,
            runs,
            partial(_run_one, run, guard),
            rollout=rollout,
            want=want,
            quota=label_quota(labels, want),
            threshold=threshold,
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
        runs = _SharedRuns(own_runs)
        async with plain_errors_task_group() as group:
            for set_index in range(2, n_sets):
                group.start_soon(build, set_index, min(sizes[(set_index - 2) % len(sizes)], max_bootstrapped))
    for set_index in range(2, n_sets):
        for name, predictor in predictors:
            sets[name].append(built(set_index, name, predictor))
    done = runs.in_order()
    passed = sum(1 for r in done.values() if r.score is not None and r.score >= threshold)
    failures = {f"{eid}@{rollout}": r.error for (eid, rollout), r in done.items() if r.error}
    return BootstrapResult({name: tuple(s) for name, s in sets.items()}, len(done), passed, failures)


async def _run_one(
    run: Callable[[Sequence[Example]], Awaitable[Evaluation]], guard: OutageGuard, example: Example
) -> ExampleResult:
    # A failure here fails the whole bootstrap, and cancels the sets waiting for this run.
    return (await guard.evaluate(run, [example], "a bootstrap run")).results[0]


class _SharedRuns:
    """The program runs of every set, by (example id, rollout): done, or in flight for one set while
    others wait for them (started in ``group``)."""

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._done: dict[tuple[str, int], ExampleResult] = {}
        self._running: set[tuple[str, int]] = set()
        self._started: list[tuple[str, int]] = []  # in the order the runs were started
        self._changed = anyio.Event()

    def start(
        self,
        examples: Sequence[Example],
        rollout: int,
        run: Callable[[Example], Awaitable[ExampleResult]],
    ) -> None:
        """Start ``run`` on each of ``examples`` neither done nor running with this rollout."""
        for example in examples:
            key = (example.id, rollout)
            if key not in self._done and key not in self._running:
                self._running.add(key)
                self._started.append(key)
                self._group.start_soon(self._run, key, run, example)

    async def _run(
        self, key: tuple[str, int], run: Callable[[Example], Awaitable[ExampleResult]], example: Example
    ) -> None:
        result = await run(example)
        self._done[key] = result
        self._running.discard(key)
        self._changed.set()  # the sets waiting read what is in
        self._changed = anyio.Event()

    def get(self, key: tuple[str, int]) -> ExampleResult | None:
        """The run's result, ``None`` while it is in flight."""
        return self._done.get(key)

    async def changed(self) -> None:
        """Wait until another run ends."""
        await self._changed.wait()

    def in_order(self) -> dict[tuple[str, int], ExampleResult]:
        """Every run done, in the order they were started."""
        return {key: self._done[key] for key in self._started if key in self._done}


async def _collect_passing(
    order: Sequence[Example],
    runs: _SharedRuns,
    run: Callable[[Example], Awaitable[ExampleResult]],
    *,
    rollout: int,
    want: int,
    quota: int,
    threshold: float,
) -> list[ExampleResult]:
    """Walk ``order`` in waves until ``want`` passing runs with labels within ``quota`` are found (or it
    ends; then passing runs over the quota fill up).

    The results are read in ``order`` as they come, not wave by wave: the set is built as soon as the
    examples read give ``want`` passing runs, and the next wave starts as soon as the waves started
    cannot give them whatever their runs still in flight return (every example not read yet counted
    as passing). So the waves, the runs and the demos are those of waves that each wait for their
    slowest run, without the wait.
    """
    passing: list[ExampleResult] = []
    spare: list[ExampleResult] = []
    counts: Counter[Hashable] = Counter()
    wave = first_wave(want)
    started = read = 0

    def usable(result: ExampleResult) -> bool:
        return result.score is not None and result.score >= threshold and bool(result.trace)

    def may_pass(example: Example) -> bool:
        result = runs.get((example.id, rollout))
        return result is None or usable(result)

    while len(passing) < want and read < len(order):
        while read < started and (result := runs.get((order[read].id, rollout))) is not None:
            label = example_label(order[read])
            read += 1
            if not usable(result):
                continue
            if counts[label] >= quota:
                spare.append(result)
                continue
            counts[label] += 1
            passing.append(result)
            if len(passing) >= want:
                return passing
        if started < len(order) and len(passing) + sum(map(may_pass, order[read:started])) < want:
            runs.start(order[started : started + wave], rollout, run)
            started = min(len(order), started + wave)
            continue
        if read < len(order):
            await runs.changed()
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
