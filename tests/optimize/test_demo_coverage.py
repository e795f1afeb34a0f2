"""Labeled demo sets for free-text outputs cover the cases the training outputs show."""

from __future__ import annotations

import random
from collections import Counter

from aprompt import Demo, Example, Predict
from aprompt._optimize.bootstrap import covering_order, demo_patterns, labeled_set

SUBJECTS_ONE = [
    "the boy",
    "the doctor",
    "my mother",
    "the girl",
    "she",
    "he",
    "the chemist",
    "the nurse",
    "my aunt",
]
SUBJECTS_MANY = [
    "the boys",
    "the doctors",
    "they",
    "the cooks",
    "my parents",
    "the nurses",
    "we",
    "the girls",
    "you",
]
VERBS = [
    ("loves", "love", "loved"),
    ("eats", "eat", "eaten"),
    ("plays", "play", "played"),
    ("reads", "read", "read"),
    ("needs", "need", "needed"),
    ("learns", "learn", "learned"),
    ("wants", "want", "wanted"),
    ("sells", "sell", "sold"),
    ("buys", "buy", "bought"),
    ("paints", "paint", "painted"),
    ("cleans", "clean", "cleaned"),
]
OBJECTS = [
    "flowers",
    "bread",
    "tennis",
    "articles",
    "chess",
    "music",
    "books",
    "a suit",
    "coins",
    "tea",
    "art",
    "cars",
    "shoes",
]


def negation(case: str, i: int) -> Example:
    """One sentence of ``case`` and its negation, varied by ``i`` (subjects, verbs, objects)."""
    one, many = SUBJECTS_ONE[i % 9], SUBJECTS_MANY[i % 9]
    third, base, participle = VERBS[i % 11]
    thing = OBJECTS[i % 13]
    sentence, negated = {
        "simple_one": (f"{one} {third} {thing}", f"{one} does not {base} {thing}"),
        "simple_many": (f"{many} {base} {thing}", f"{many} do not {base} {thing}"),
        "perfect_one": (f"{one} has {participle} {thing}", f"{one} has not {participle} {thing}"),
        "perfect_many": (f"{many} have {participle} {thing}", f"{many} have not {participle} {thing}"),
    }[case]
    return Example(inputs={"sentence": sentence}, labels={"negated": negated}, id=f"{case}-{i}")


def case_of(demo: Demo) -> str:
    words = str(demo["negated"]).split()
    case = next(w for w in ("does", "do", "has", "have") if w in words)
    return {"does": "simple_one", "do": "simple_many", "has": "perfect_one", "have": "perfect_many"}[case]


def trainset() -> list[Example]:
    """40 examples, the first 12 all of one case (as a shuffle may put them), the rest mixed."""
    head = [negation("simple_many", i) for i in range(12)]
    cases = ["simple_one", "simple_many", "perfect_one", "perfect_many"]
    tail = [negation(cases[i % 4], 12 + i) for i in range(28)]
    random.Random(3).shuffle(tail)
    return head + tail


NEGATE = Predict("sentence -> negated")


def test_a_labeled_set_covers_every_case_though_the_first_examples_show_one() -> None:
    picked = labeled_set(NEGATE, trainset(), 4)
    assert Counter(case_of(d) for d in picked.demos) == Counter(
        {"simple_one": 1, "simple_many": 1, "perfect_one": 1, "perfect_many": 1}
    )


def test_a_set_larger_than_the_cases_shows_every_case_and_repeats_no_example() -> None:
    picked = labeled_set(NEGATE, trainset(), 8)
    assert {case_of(d) for d in picked.demos} == {"simple_one", "simple_many", "perfect_one", "perfect_many"}
    assert len(set(picked.source_ids)) == 8


def test_sets_drawn_from_different_orders_cover_the_same_cases_with_different_examples() -> None:
    data = trainset()
    sets = []
    for seed in range(4):
        order = list(data)
        random.Random(seed).shuffle(order)
        picked = labeled_set(NEGATE, order, 4)
        assert len({case_of(d) for d in picked.demos}) == 4
        sets.append(picked.source_ids)
    assert len(set(sets)) > 1


def test_demos_already_in_a_set_count_as_covered() -> None:
    taken = [Demo(negation("simple_one", 0).fields()), Demo(negation("perfect_one", 1).fields())]
    picked = labeled_set(NEGATE, trainset(), 2, taken)
    assert {case_of(d) for d in picked.demos} == {"simple_many", "perfect_many"}


def test_outputs_that_share_no_pattern_keep_the_given_order() -> None:
    qa = Predict("question -> answer")
    data = [
        Example(inputs={"question": f"What is item {i}?"}, labels={"answer": f"answer {i * 7}"}, id=str(i))
        for i in range(10)
    ]
    assert labeled_set(qa, data, 3).source_ids == ("0", "1", "2")


def test_patterns_are_the_output_words_and_word_pairs_the_inputs_lack() -> None:
    demo = Demo({"sentence": "the boy loves flowers", "negated": "The boy does not love flowers."})
    assert demo_patterns(NEGATE, demo) == {
        "does", "not", "love", "boy does", "does not", "not love", "love flowers"
    }  # fmt: skip


def test_a_pattern_every_item_shows_or_only_one_shows_weighs_nothing() -> None:
    shared, unique = frozenset({"not"}), frozenset({"zebra"})
    # Items 0-2 show only a shared or a unique pattern; 3 and 4 show a case seen twice.
    patterns = [shared | unique, shared, shared, shared | {"do not"}, shared | {"do not"}]
    assert covering_order(patterns, 1) == [3, 0, 1, 2, 4]


def test_a_labeled_set_of_a_small_label_space_shows_every_label_before_repeating_one() -> None:
    # Three intents, a set of four: two examples of each of the first two labels come first in order.
    rows = [("hi", "greet"), ("hello", "greet"), ("bye", "leave"), ("see you", "leave")]
    rows += [("what time is it", "ask"), ("where is it", "ask"), ("hey", "greet"), ("ciao", "leave")]
    data = [Example(inputs={"text": t}, labels={"label": lab}, id=str(i)) for i, (t, lab) in enumerate(rows)]
    picked = labeled_set(Predict("text -> label"), data, 4)
    labels = [str(d["label"]) for d in picked.demos]
    assert len(labels) == 4 and set(labels) == {"greet", "leave", "ask"}, labels
    assert picked.source_ids == ("0", "1", "2", "4"), "the examples' order, each label once first"
