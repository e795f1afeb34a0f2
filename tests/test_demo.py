"""The demo's task: its data ships with the package and its metric reads a reply as a person would."""

from __future__ import annotations

from types import SimpleNamespace

import aprompt
from aprompt._optimize.evaluate import Evaluation, ExampleResult
from aprompt.demo.__main__ import exact_negation, fixed_examples, load_examples, parse_args


def test_the_demo_data_ships_with_the_package_with_every_sentence_kind_balanced() -> None:
    examples = load_examples()
    assert len(examples) == 600
    assert all(" not " in e.labels["negated"] for e in examples)
    assert len({e.id for e in examples}) == 600


def test_the_demo_metric_forgives_case_spacing_and_a_final_period_only() -> None:
    example = aprompt.Example(
        inputs={"sentence": "the nurse plays tennis"}, labels={"negated": "the nurse does not play tennis"}
    )
    assert exact_negation(example, SimpleNamespace(negated=" The nurse  does not play tennis."))
    assert not exact_negation(example, SimpleNamespace(negated="The nurse plays tennis."))
    assert not exact_negation(example, SimpleNamespace(negated="the nurse doesn't play tennis"))


def test_the_demo_shows_held_out_examples_the_optimized_program_fixed() -> None:
    test = load_examples()[:3]
    before = Evaluation(tuple(ExampleResult(e.id, s) for e, s in zip(test, [0.0, 1.0, 0.0], strict=True)))
    after = Evaluation(tuple(ExampleResult(e.id, s) for e, s in zip(test, [1.0, 1.0, 0.0], strict=True)))
    assert [e for e, _, _ in fixed_examples(test, before, after, 2)] == [test[0]]


def test_the_demo_fits_its_default_split_in_the_shipped_data() -> None:
    args = parse_args([])
    assert args.train + args.val + args.test <= len(load_examples())
