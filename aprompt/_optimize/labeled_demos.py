"""Labeled demos: training examples shown as demos, and how a demo set picks them.

A labeled demo is a training example that labels the predictor's outputs and gives at least one of its
inputs (:func:`labeled_demo`). The labeled-only set (demo set 1) holds ``max_labeled`` of them, or one per
label of a small label space with more labels than that and no more than the set's bound
(:func:`labeled_size`).

Diversity: a set does not repeat an output while others are to be had. Outputs are the example's labels
(those a demo shows, :func:`shown_labels`: a bootstrapped demo's run passed on them) or, for a labeled
demo, the predictor's output fields. When the training labels look like a small label space
(:func:`label_quota`: at most half as many distinct values as examples, and at most :data:`MAX_CLASSES`),
each label may appear ``ceil(size / labels)`` times, so a set covers as many labels as its size allows;
otherwise each output once, free text covering its patterns
(:mod:`aprompt._optimize.demo_patterns`). Examples over the quota only fill a set the walk could not fill
otherwise. A set never shows one demo twice (a trainset holding an example under two ids gives two equal
demos).
"""

from __future__ import annotations

import json
import math
import operator
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import TypeVar

import attrs

from aprompt._optimize.demo_patterns import covering_order, demo_patterns
from aprompt._optimize.examples import Example, missing_label
from aprompt.program.predictor import Predict
from aprompt.program.values import Demo
from aprompt.run._value_identity import stable_form

T = TypeVar("T")


#: The most distinct labels a label space may have to be treated as classes (covered in every set).
MAX_CLASSES = 32


@attrs.frozen
class DemoSet:
    """Demos for one predictor; ``bootstrapped`` of them came from passing program runs."""

    demos: tuple[Demo, ...]
    bootstrapped: int = 0
    source_ids: tuple[str, ...] = ()


def labeled_demo(predictor: Predict, example: Example) -> Demo | None:
    """The example as a demo for ``predictor`` when it has all of its output fields and at least one of
    its input fields: the fields it has of the signature (the last stage of a pipeline shows the
    program's inputs and the final answer, as a hand-written prompt would, without the intermediate
    fields no example labels). A label that is ``None`` or NaN (a missing value of a data frame's row)
    labels nothing: shown as an output, it would teach the model to answer "null", and as an input (an
    intermediate field) that the field may be "nan"."""
    present = {name: value for name, value in example.labels.items() if not missing_label(value)}
    fields = {**example.inputs, **present}
    outputs = [n for n in predictor.signature.output_names if n != "reasoning"]
    inputs = predictor.signature.input_names
    labeled = all(n in fields and not missing_label(fields[n]) for n in outputs)
    if outputs and labeled and any(n in fields for n in inputs):
        names = (*inputs, *predictor.signature.output_names)
        return Demo({n: fields[n] for n in names if n in fields})
    return None


def example_label(example: Example, names: Collection[str] | None = None) -> tuple[tuple[str, str], ...]:
    """The example's labels as a hashable key (what a passing run's demos say): those in ``names``
    when given (:func:`shown_labels`)."""
    return tuple(sorted((k, str(v)) for k, v in example.labels.items() if names is None or k in names))


def shown_labels(
    predictors: Sequence[tuple[str, Predict]], examples: Sequence[Example]
) -> frozenset[str] | None:
    """The labels a demo shows: those named as an output field of a predictor, or ``None`` (all of
    them) when no label is (a metric reading a label of another name). A label no demo shows (a note,
    a source, a row's id) would make every example's labels distinct, and a small label space look
    like free text."""
    outputs = {n for _, p in predictors for n in p.signature.output_names if n != "reasoning"}
    shown = frozenset(n for e in examples for n in e.labels if n in outputs)
    return shown or None


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


def demo_key(demo: Demo) -> str:
    """A demo's fields as canonical text (equal demos have equal keys, in every process: a set by its
    sorted items, not its own order, which follows the hash seed and how the set was built)."""
    return json.dumps(demo.to_dict(), sort_keys=True, default=stable_form, ensure_ascii=False)


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
