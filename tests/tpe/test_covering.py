"""TPESampler's covering start-up: every choice of every categorical parameter gets a trial early."""

from __future__ import annotations

import pytest

from aprompt._errors import ConfigError
from aprompt.tpe import Categorical, Distribution, TPESampler, TrialState, default_n_cover

SPACE: dict[str, Distribution] = {
    "extract.instruction": Categorical(6),
    "extract.demos": Categorical(4),
    "answer.instruction": Categorical(5),
    "answer.demos": Categorical(6),
}


def _choices_held(sampler: TPESampler, name: str) -> set[int]:
    return {int(r.params[name]) for r in sampler.trials if r.state is not TrialState.FAILED}


def _complete_in_batches(sampler: TPESampler, n: int, batch: int) -> None:
    """Ask in batches and tell each batch afterwards, as the search loop does."""
    asked = 0
    while asked < n:
        suggestions = sampler.ask_batch(min(batch, n - asked))
        for s in suggestions:
            sampler.tell(s, 0.1 * sum(int(v) for v in s.params.values()) / len(s.params))
        asked += len(suggestions)


@pytest.mark.parametrize("seed", range(10))
def test_the_first_trials_try_every_choice_of_every_parameter(seed: int) -> None:
    sampler = TPESampler(SPACE, seed=seed, n_trials_hint=20)
    _complete_in_batches(sampler, 6, batch=3)  # as many trials as the largest parameter has choices
    for name, dist in SPACE.items():
        assert isinstance(dist, Categorical)
        assert _choices_held(sampler, name) == set(range(dist.n_choices)), name


def test_pending_trials_count_as_trying_their_choices() -> None:
    sampler = TPESampler({"a": Categorical(8), "b": Categorical(8)}, seed=3, n_trials_hint=20)
    batch = sampler.ask_batch(8)
    assert sorted(int(s.params["a"]) for s in batch) == list(range(8))


def test_a_failed_trial_leaves_its_choice_to_be_tried_again() -> None:
    space = {"a": Categorical(6), "b": Categorical(6)}
    for seed in range(5):
        sampler = TPESampler(space, seed=seed, n_trials_hint=20)
        sampler.tell_failed(sampler.ask())
        rest = [sampler.ask() for _ in range(6)]
        assert {int(s.params["a"]) for s in rest} == set(range(6))


def test_a_choice_added_to_the_space_is_tried_next() -> None:
    sampler = TPESampler(SPACE, seed=2, n_trials_hint=30)
    _complete_in_batches(sampler, 8, batch=2)
    grown = {**SPACE, "extract.instruction": Categorical(7)}
    rebuilt = TPESampler.from_history(grown, sampler.trials, seed=2, n_trials_hint=30)
    assert rebuilt.ask().params["extract.instruction"] == 6


def test_a_sampler_rebuilt_mid_cover_completes_the_same_cover() -> None:
    original = TPESampler(SPACE, seed=7, n_trials_hint=20)
    _complete_in_batches(original, 2, batch=2)
    resumed = TPESampler.from_history(SPACE, original.trials, seed=7, n_trials_hint=20)
    _complete_in_batches(original, 4, batch=2)
    _complete_in_batches(resumed, 4, batch=2)
    assert resumed.trials == original.trials
    assert _choices_held(resumed, "answer.demos") == set(range(6))


def test_n_cover_zero_turns_covering_off() -> None:
    # Uniform draws: 12 trials leave some of 12 choices untried (on each of these seeds).
    space = {"a": Categorical(12), "b": Categorical(12)}
    for seed in range(5):
        plain = TPESampler(space, seed=seed, n_startup=12, n_cover=0)
        _complete_in_batches(plain, 12, batch=1)
        assert len(_choices_held(plain, "a")) < 12
        covering = TPESampler(space, seed=seed, n_startup=12)
        _complete_in_batches(covering, 12, batch=1)
        assert len(_choices_held(covering, "a")) == 12


def test_choices_are_forced_only_below_n_cover() -> None:
    space = {"a": Categorical(12), "b": Categorical(12)}
    for seed in range(5):
        sampler = TPESampler(space, seed=seed, n_startup=12, n_cover=4)
        _complete_in_batches(sampler, 4, batch=1)
        assert len(_choices_held(sampler, "a")) == 4
        _complete_in_batches(sampler, 8, batch=1)
        assert len(_choices_held(sampler, "a")) < 12


def test_the_default_covering_spans_half_the_planned_trials() -> None:
    assert default_n_cover(20) == 10
    assert default_n_cover(28) == 14
    assert default_n_cover(1) == 1
    assert default_n_cover(None) is None
    assert TPESampler(SPACE, n_trials_hint=33).n_cover == 17
    assert TPESampler(SPACE, n_trials_hint=33, n_cover=0).n_cover == 0


def test_a_negative_n_cover_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="n_cover"):
        TPESampler(SPACE, n_cover=-1)
