"""TPESampler: ask/tell, determinism, replay from history, batches, failures and misuse."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aprompt._errors import ConfigError
from aprompt.tpe import (
    Categorical,
    Distribution,
    FloatRange,
    IntRange,
    Suggestion,
    TPESampler,
    TrialError,
    TrialRecord,
    TrialState,
)

MIXED: dict[str, Distribution] = {
    "instruction": Categorical(6),
    "demos": Categorical(6),
    "k": IntRange(0, 8),
    "temperature": FloatRange(0.0, 1.5),
    "lr": FloatRange(1e-4, 1e-1, log=True),
}


def objective(params: dict[str, int | float]) -> float:
    """A smooth score in [0, 1] peaking at instruction 2, demos 4, k 5, temperature 0.7, lr 1e-2."""
    score = (params["instruction"] == 2) * 0.3 + (params["demos"] == 4) * 0.3
    score += 0.2 * math.exp(-((params["k"] - 5) ** 2) / 4)
    score += 0.1 * math.exp(-((params["temperature"] - 0.7) ** 2))
    score += 0.1 * math.exp(-((math.log10(params["lr"]) + 2) ** 2))
    return score


def index_sum(params: dict[str, int | float]) -> float:
    """A score for all-categorical spaces: higher choices are better."""
    return float(sum(params.values())) / 10


def drive(
    sampler: TPESampler,
    n: int,
    batch: int = 1,
    score: Callable[[dict[str, int | float]], float] = objective,
) -> list[Suggestion]:
    asked: list[Suggestion] = []
    while len(asked) < n:
        suggestions = sampler.ask_batch(min(batch, n - len(asked)))
        for s in suggestions:
            sampler.tell(s, score(s.params))
        asked += suggestions
    return asked


def test_ask_numbers_trials_from_zero_and_tell_completes_them() -> None:
    sampler = TPESampler(MIXED, seed=0)
    first, second = sampler.ask(), sampler.ask()
    assert (first.number, second.number) == (0, 1)
    assert sampler.pending == (0, 1)
    sampler.tell(first, 0.5)
    sampler.tell(1, 0.25)
    assert len(sampler.pending) == 0
    assert [(r.number, r.state, r.value) for r in sampler.trials] == [
        (0, TrialState.COMPLETE, 0.5),
        (1, TrialState.COMPLETE, 0.25),
    ]
    assert sampler.trials[0].params == first.params


def test_suggestions_are_frozen_and_params_are_the_callers_copy() -> None:
    sampler = TPESampler(MIXED, seed=0)
    suggestion = sampler.ask()
    with pytest.raises(AttributeError):
        suggestion.number = 5  # type: ignore[misc]
    suggestion.params["instruction"] = 99
    assert sampler.trials[0].params["instruction"] != 99


def test_asked_params_are_the_trials_params_from_a_start_as_copies() -> None:
    sampler = TPESampler(MIXED, seed=0)
    drive(sampler, 5)
    pending = sampler.ask()
    assert sampler.asked_params() == [r.params for r in sampler.trials]
    assert sampler.asked_params(4) == [sampler.trials[4].params, pending.params]
    assert sampler.asked_params(6) == []
    sampler.asked_params()[0]["instruction"] = 99
    assert sampler.trials[0].params["instruction"] != 99


def test_param_types_are_int_for_discrete_and_float_for_continuous() -> None:
    for s in drive(TPESampler(MIXED, seed=3), 15):
        assert type(s.params["instruction"]) is int and type(s.params["k"]) is int
        assert type(s.params["temperature"]) is float and type(s.params["lr"]) is float


def test_same_seed_repeats_exactly() -> None:
    a = drive(TPESampler(MIXED, seed=7), 25)
    b = drive(TPESampler(MIXED, seed=7), 25)
    assert a == b


def test_different_seeds_differ() -> None:
    a = drive(TPESampler(MIXED, seed=1), 25)
    b = drive(TPESampler(MIXED, seed=2), 25)
    assert [s.params for s in a] != [s.params for s in b]


def test_tell_order_within_a_batch_does_not_change_later_suggestions() -> None:
    def run(reverse: bool) -> list[Suggestion]:
        sampler = TPESampler(MIXED, seed=5, n_startup=2)
        for _ in range(6):
            batch = sampler.ask_batch(3)
            for s in reversed(batch) if reverse else batch:
                sampler.tell(s, objective(s.params))
        return [sampler.ask() for _ in range(3)]

    assert run(reverse=False) == run(reverse=True)


def test_a_sampler_rebuilt_from_history_makes_the_same_next_suggestions() -> None:
    original = TPESampler(MIXED, seed=11, n_startup=4)
    drive(original, 20, batch=2)
    resumed = TPESampler.from_history(MIXED, original.trials, seed=11, n_startup=4)
    assert drive(resumed, 15, batch=2) == drive(original, 15, batch=2)


def test_a_rebuild_in_the_middle_of_a_batch_keeps_pending_trials_pending() -> None:
    original = TPESampler(MIXED, seed=4, n_startup=3)
    drive(original, 12)
    batch = original.ask_batch(3)
    original.tell(batch[0], 0.4)
    resumed = TPESampler.from_history(MIXED, original.trials, seed=4, n_startup=3)
    assert resumed.pending == (batch[1].number, batch[2].number)
    for sampler in (original, resumed):
        sampler.tell(batch[2], 0.1)
        sampler.tell_failed(batch[1])
    assert drive(resumed, 10) == drive(original, 10)


def test_a_rebuild_with_another_seed_diverges() -> None:
    original = TPESampler(MIXED, seed=11)
    drive(original, 15)
    other = TPESampler.from_history(MIXED, original.trials, seed=12)
    assert other.ask().params != original.ask().params


def test_history_survives_a_json_round_trip() -> None:
    import json

    original = TPESampler(MIXED, seed=9, n_startup=3)
    drive(original, 12)
    journal = json.dumps(
        [
            {"number": r.number, "params": r.params, "state": r.state.value, "value": r.value}
            for r in original.trials
        ]
    )
    history = [
        TrialRecord(d["number"], d["params"], TrialState(d["state"]), d["value"]) for d in json.loads(journal)
    ]
    resumed = TPESampler.from_history(MIXED, history, seed=9, n_startup=3)
    assert resumed.ask() == original.ask()


def test_ask_batch_gives_distinct_pending_suggestions() -> None:
    space = {"a": Categorical(3), "b": Categorical(2)}
    sampler = TPESampler(space, seed=0, n_startup=2)
    drive(sampler, 4, score=index_sum)
    batch = sampler.ask_batch(2)
    assert len({tuple(s.params.values()) for s in batch}) == 2
    assert sampler.pending == tuple(s.number for s in batch)
    for s in batch:
        sampler.tell(s, 0.5)
    # The 6-point space is used up: the sampler repeats rather than fails.
    assert len(sampler.ask_batch(3)) == 3


def test_a_batch_never_repeats_a_pending_point_even_when_repeats_are_allowed() -> None:
    space = {"a": Categorical(4), "b": Categorical(4)}
    sampler = TPESampler(space, seed=1, n_startup=2, avoid_repeats=False)
    drive(sampler, 2, score=index_sum)
    batch = sampler.ask_batch(8)
    assert len({tuple(s.params.values()) for s in batch}) == 8


@pytest.mark.parametrize("seed", range(10))
def test_once_every_point_is_held_a_batch_repeats_an_evaluated_point_rather_than_one_in_flight(
    seed: int,
) -> None:
    # Repeats avoided (the default): past the space's 4 points the batch must repeat some, and one in
    # flight is no better re-measured twice at once than one already told.
    space = {"a": Categorical(2), "b": Categorical(2)}
    sampler = TPESampler(space, seed=seed, n_startup=2)
    drive(sampler, 3, score=index_sum)
    batch = sampler.ask_batch(4)
    assert len({tuple(s.params.values()) for s in batch}) == 4


def test_repeats_of_evaluated_points_are_avoided_while_candidates_remain() -> None:
    space = {"a": Categorical(8), "b": Categorical(8)}
    sampler = TPESampler(space, seed=2, n_startup=3)
    seen = [tuple(s.params.values()) for s in drive(sampler, 30, score=index_sum)]
    assert len(set(seen)) == 30


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    n_int=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    multivariate=st.booleans(),
)
def test_a_small_space_is_used_up_before_any_point_repeats(
    sizes: list[int], n_int: int, seed: int, multivariate: bool
) -> None:
    # Once the model concentrates, every candidate can land on points already tried.
    space: dict[str, Distribution] = {f"c{i}": Categorical(n) for i, n in enumerate(sizes)}
    space["n"] = IntRange(0, n_int)
    total = math.prod(sizes) * (n_int + 1)
    sampler = TPESampler(space, seed=seed, n_startup=2, multivariate=multivariate)
    seen = [tuple(s.params.values()) for s in drive(sampler, total, score=index_sum)]
    assert len(set(seen)) == total


def test_the_model_moves_suggestions_towards_the_best_region() -> None:
    sampler = TPESampler(MIXED, seed=0, n_trials_hint=40)
    asked = drive(sampler, 40)
    early = np.mean([objective(s.params) for s in asked[:10]])
    late = np.mean([objective(s.params) for s in asked[-10:]])
    assert late > early + 0.15


def test_a_failed_trial_is_left_out_rather_than_scored_zero() -> None:
    space = {"a": Categorical(6), "b": Categorical(6)}
    sampler = TPESampler(space, seed=3, n_startup=2)
    drive(sampler, 8, score=index_sum)
    sampler.tell_failed(sampler.ask())
    # Had the failure been scored, where it happened would matter; it does not.
    elsewhere = [*sampler.trials[:-1], TrialRecord(8, {"a": 5, "b": 5}, TrialState.FAILED)]
    assert sampler.trials[-1].params != elsewhere[-1].params
    rebuilt = TPESampler.from_history(space, elsewhere, seed=3, n_startup=2)
    assert sampler.ask() == rebuilt.ask()
    assert sampler.trials[8].state is TrialState.FAILED and sampler.trials[8].value is None


def test_failed_trials_do_not_count_towards_the_start_up() -> None:
    sampler = TPESampler({"a": Categorical(4)}, seed=0, n_startup=2)
    for _ in range(5):
        sampler.tell_failed(sampler.ask())
    assert sum(r.state is TrialState.COMPLETE for r in sampler.trials) < sampler.n_startup


def test_start_up_scales_with_the_planned_run() -> None:
    space = {f"p{i}": Categorical(12) for i in range(4)}
    assert TPESampler(space, n_trials_hint=10).n_startup == 2
    assert TPESampler(space, n_trials_hint=20).n_startup == 4
    assert TPESampler(space, n_trials_hint=500).n_startup == 10
    assert TPESampler(space).n_startup == 8
    assert TPESampler({"a": Categorical(3)}).n_startup == 2
    assert TPESampler(space, n_startup=0).n_startup == 0


def test_univariate_mode_also_learns() -> None:
    sampler = TPESampler(MIXED, seed=0, n_trials_hint=40, multivariate=False)
    asked = drive(sampler, 40)
    assert np.mean([objective(s.params) for s in asked[-10:]]) > np.mean(
        [objective(s.params) for s in asked[:10]]
    )


@settings(max_examples=25, deadline=None)
@given(
    bounds=st.lists(
        st.tuples(st.integers(-50, 50), st.integers(0, 30), st.booleans()), min_size=1, max_size=3
    ),
    seed=st.integers(0, 2**32 - 1),
    values=st.lists(st.floats(-1e6, 1e6), min_size=14, max_size=14),
)
def test_numeric_suggestions_stay_within_bounds(
    bounds: list[tuple[int, int, bool]], seed: int, values: list[float]
) -> None:
    space: dict[str, Distribution] = {}
    for i, (low, width, is_int) in enumerate(bounds):
        space[f"x{i}"] = IntRange(low, low + width) if is_int else FloatRange(low, low + width + 0.5)
    space["lr"] = FloatRange(1e-5, 1.0, log=True)
    sampler = TPESampler(space, seed=seed, n_startup=2)
    for value in values:
        s = sampler.ask()
        sampler.tell(s, value)
        for name, dist in space.items():
            assert isinstance(dist, IntRange | FloatRange)
            assert dist.low <= s.params[name] <= dist.high


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"n_startup": -1},
        {"n_trials_hint": 0},
        {"n_ei_candidates": 0},
        {"prior_weight": 0.0},
        {"prior_weight": float("nan")},
        {"gamma": 0.25},
    ],
)
def test_bad_options_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TPESampler(MIXED, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "weights",
    [
        lambda n: -np.ones(n),
        lambda n: np.full(n, np.nan),
        lambda n: np.ones(n + 1),
    ],
)
def test_weights_that_are_not_one_finite_non_negative_number_per_observation_are_a_config_error(
    weights: Callable[[int], np.ndarray],
) -> None:
    sampler = TPESampler(MIXED, seed=0, n_startup=2, weights=weights)
    with pytest.raises(ConfigError, match="weights"):
        drive(sampler, 4)


@pytest.mark.parametrize(
    "gamma", [lambda n: 1.7, lambda n: float("nan"), lambda n: None], ids=["float", "nan", "none"]
)
def test_a_gamma_that_does_not_return_an_int_is_a_config_error(gamma: Callable[[int], Any]) -> None:
    sampler = TPESampler(MIXED, seed=0, n_startup=2, gamma=gamma)
    with pytest.raises(ConfigError, match="gamma"):
        drive(sampler, 4)


def test_zero_weights_leave_those_observations_out_of_the_model() -> None:
    # Recent trials only: the older ones weigh nothing, which is no error.
    sampler = TPESampler(MIXED, seed=0, n_startup=2, weights=lambda n: (np.arange(n) >= n - 3).astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asked = drive(sampler, 12)
    assert len(asked) == 12


def test_weights_each_finite_but_summing_beyond_the_largest_float_still_fit_a_model() -> None:
    # Each weight is allowed; their sum overflows to inf, which must not turn the mixture into NaN.
    sampler = TPESampler(MIXED, seed=0, n_startup=2, weights=lambda n: np.full(n, 1e308))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asked = drive(sampler, 12)
    assert len(asked) == 12


def test_telling_a_trial_that_was_never_asked_is_an_error() -> None:
    sampler = TPESampler(MIXED)
    with pytest.raises(TrialError, match="never asked"):
        sampler.tell(0, 0.5)


def test_telling_a_trial_twice_is_an_error() -> None:
    sampler = TPESampler(MIXED)
    s = sampler.ask()
    sampler.tell(s, 0.5)
    with pytest.raises(TrialError, match="already told"):
        sampler.tell(s, 0.6)
    with pytest.raises(TrialError, match="already told"):
        sampler.tell_failed(s)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), pytest.param(10**400, id="int-beyond-float"), None, "0.5", True]
)
def test_telling_a_value_that_is_not_a_finite_number_is_an_error(value: object) -> None:
    sampler = TPESampler(MIXED)
    s = sampler.ask()
    with pytest.raises(TrialError):
        sampler.tell(s, value)  # type: ignore[arg-type]
    assert sampler.pending == (s.number,)


def test_ask_batch_needs_a_positive_size() -> None:
    with pytest.raises(ConfigError):
        TPESampler(MIXED).ask_batch(0)


def test_history_that_does_not_fit_the_space_is_an_error() -> None:
    bad = TrialRecord(0, {"instruction": 9}, TrialState.COMPLETE, 0.5)
    with pytest.raises(TrialError, match="trial 0"):
        TPESampler.from_history(MIXED, [bad])


def test_history_records_check_their_state_and_value() -> None:
    with pytest.raises(TrialError):
        TrialRecord(0, {}, TrialState.COMPLETE, None)
    with pytest.raises(TrialError):
        TrialRecord(0, {}, TrialState.FAILED, 0.5)
    with pytest.raises(TrialError):
        TrialRecord(-1, {}, TrialState.PENDING)


def test_a_history_that_fails_records_nothing() -> None:
    good = TrialRecord(0, {"a": 1}, TrialState.COMPLETE, 0.5)
    bad = TrialRecord(1, {"a": 7}, TrialState.COMPLETE, 0.5)
    sampler = TPESampler({"a": Categorical(2)})
    with pytest.raises(TrialError, match="trial 1"):
        sampler.tell_history([good, bad])
    assert sampler.trials == () and sampler.ask().number == 0


def test_a_history_listing_a_trial_twice_is_an_error() -> None:
    record = TrialRecord(0, {"a": 1}, TrialState.COMPLETE, 0.5)
    with pytest.raises(TrialError, match="twice"):
        TPESampler.from_history({"a": Categorical(2)}, [record, record])


def test_history_cannot_rewrite_known_trials() -> None:
    sampler = TPESampler(MIXED)
    s = sampler.ask()
    with pytest.raises(TrialError, match="already known"):
        sampler.tell_history([TrialRecord(s.number, s.params, TrialState.COMPLETE, 1.0)])


def test_trial_errors_are_value_errors() -> None:
    assert issubclass(TrialError, ValueError)


def test_repr_names_the_state() -> None:
    sampler = TPESampler({"a": Categorical(2)}, seed=3)
    sampler.ask()
    assert "seed=3" in repr(sampler) and "pending=1" in repr(sampler)


def test_asking_with_5000_observations_stays_fast() -> None:
    space = {f"p{i}": Categorical(12) for i in range(4)} | {"x": FloatRange(0.0, 1.0)}
    rng = np.random.default_rng(0)
    history = [
        TrialRecord(
            i,
            {**{f"p{j}": int(rng.integers(12)) for j in range(4)}, "x": float(rng.random())},
            TrialState.COMPLETE,
            float(rng.random()),
        )
        for i in range(5_000)
    ]
    sampler = TPESampler.from_history(space, history)
    started = time.perf_counter()
    for _ in range(5):
        sampler.tell(sampler.ask(), 0.5)
    assert (time.perf_counter() - started) / 5 < 0.25


def test_ask_with_params_records_the_callers_point_as_the_trial() -> None:
    sampler = TPESampler({"instruction": Categorical(6), "demos": Categorical(6)}, seed=0)
    drive(sampler, 6, score=index_sum)
    suggestion = sampler.ask({"instruction": 1, "demos": 0})
    assert (suggestion.number, suggestion.params) == (6, {"instruction": 1, "demos": 0})
    assert sampler.pending == (6,)
    sampler.tell(suggestion, 0.1)
    assert sampler.trials[-1].params == {"instruction": 1, "demos": 0}
    assert sampler.trials[-1].state is TrialState.COMPLETE


def test_a_rebuilt_sampler_continues_after_a_callers_point_as_the_original() -> None:
    space: dict[str, Distribution] = {"instruction": Categorical(6), "demos": Categorical(6)}
    sampler = TPESampler(space, seed=3)
    drive(sampler, 8, score=index_sum)
    sampler.tell(sampler.ask({"instruction": 0, "demos": 0}), 0.0)
    rebuilt = TPESampler.from_history(space, sampler.trials, seed=3)
    assert [rebuilt.ask().params for _ in range(4)] == [sampler.ask().params for _ in range(4)]


def test_ask_with_params_outside_the_space_is_a_config_error() -> None:
    sampler = TPESampler({"instruction": Categorical(6)}, seed=0)
    with pytest.raises(ConfigError, match="instruction=6"):
        sampler.ask({"instruction": 6})
    with pytest.raises(ConfigError, match="missing"):
        sampler.ask({})
    assert sampler.trials == ()


@pytest.mark.parametrize("params", ["ab", 3, 2.5])
def test_params_that_are_not_a_mapping_are_a_config_error(params: Any) -> None:
    # "ab" iterates as the space's names, a and b.
    sampler = TPESampler({"a": Categorical(3), "b": Categorical(3)}, seed=0)
    with pytest.raises(ConfigError, match="mapping"):
        sampler.ask(params)
    assert sampler.trials == ()


@pytest.mark.parametrize("params", ["ab", 3, None])
def test_a_history_record_whose_params_are_not_a_mapping_is_a_trial_error(params: Any) -> None:
    sampler = TPESampler({"a": Categorical(3), "b": Categorical(3)}, seed=0)
    with pytest.raises(TrialError, match="trial 0"):
        sampler.tell_history([TrialRecord(0, params, TrialState.COMPLETE, 0.5)])
    assert sampler.trials == ()
