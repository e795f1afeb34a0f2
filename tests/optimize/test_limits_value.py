"""``aprompt.Limits``: the run limits as one frozen, checked value, ``optimize(..., limits=...)``.

The five former keyword arguments (``max_lm_calls=``, ``max_tokens=``, ``max_cost=``, ``max_time=``,
``prices=``) still work, with a ``DeprecationWarning`` naming the replacement and pointing at the
caller's line; giving both forms is a ``ConfigError``; and the two forms are the same run (a run started
with one resumes with the other, spending nothing more).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import attrs
import pytest

import aprompt
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.conftest import TEST_API_KEY
from tests.run.test_limits_hold import client, qa_run, responder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


BAD_FIELDS: list[tuple[str, object]] = [
    ("max_lm_calls", 2.5),
    ("max_lm_calls", -1),
    ("max_lm_calls", True),
    ("max_lm_calls", "100"),
    ("max_tokens", 1e6),
    ("max_tokens", 2.5),
    ("max_cost", True),
    ("max_cost", math.nan),
    ("max_cost", -0.5),
    ("max_time", "60"),
    ("max_time", False),
    ("max_time", -1),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_limits_refuses_a_bad_field_naming_it_and_its_value(field: str, value: object) -> None:
    with pytest.raises(aprompt.ConfigError, match=field) as info:
        aprompt.Limits(**{field: value})
    assert repr(value) in str(info.value)


BAD_PRICES: list[object] = [
    {"gpt-4o-mini": (math.nan, 1.0)},
    {"gpt-4o-mini": (-1.0, 1.0)},
    {"gpt-4o-mini": (1.0, math.inf)},
    {"gpt-4o-mini": (True, 1.0)},
    {"gpt-4o-mini": 1.0},
    {"gpt-4o-mini": (1.0, "2")},
    [("gpt-4o-mini", (1.0, 1.0))],
]


@pytest.mark.parametrize("prices", BAD_PRICES, ids=[repr(p) for p in BAD_PRICES])
def test_limits_refuses_bad_prices_naming_them(prices: object) -> None:
    with pytest.raises(aprompt.ConfigError, match="prices"):
        aprompt.Limits(max_cost=1.0, prices=prices)  # type: ignore[arg-type]


def test_limits_refuses_max_cost_without_prices() -> None:
    with pytest.raises(aprompt.ConfigError, match=r"max_cost=1\.0 needs prices="):
        aprompt.Limits(max_cost=1.0)


def test_limits_is_frozen_and_keeps_its_own_copy_of_the_prices() -> None:
    prices = {"gpt-4o-mini": (0.15, 0.60)}
    limits = aprompt.Limits(max_cost=2.0, prices=prices)
    prices["gpt-4o-mini"] = (0.0, 0.0)

    assert limits.prices == {"gpt-4o-mini": (0.15, 0.60)}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        limits.max_cost = 3.0  # type: ignore[misc]


async def test_optimize_refuses_limits_that_are_not_a_limits_value() -> None:
    with pytest.raises(aprompt.ConfigError, match=r"limits must be an aprompt\.Limits.*100"):
        await aprompt.optimize(object(), [], None, limits={"max_lm_calls": 100})  # type: ignore[arg-type]


async def test_optimize_refuses_limits_together_with_an_old_limit_argument() -> None:
    with pytest.raises(aprompt.ConfigError, match=r"both limits= and max_time="):
        await aprompt.optimize(
            object(),
            [],
            None,  # type: ignore[arg-type]
            limits=aprompt.Limits(max_lm_calls=100),
            max_time=60.0,
        )


def _warned_here(record: pytest.WarningsRecorder) -> warnings.WarningMessage:
    (warning,) = [w for w in record if issubclass(w.category, DeprecationWarning)]
    assert "limits=aprompt.Limits(max_lm_calls=...)" in str(warning.message)
    assert warning.filename == __file__  # the caller's line, not aprompt's
    return warning


# Each call below warns, then stops at the bad seed: the warning comes before anything else is checked.
async def test_optimize_with_an_old_limit_argument_warns_naming_the_replacement() -> None:
    with pytest.warns(DeprecationWarning) as record, pytest.raises(aprompt.ConfigError, match="seed"):
        await aprompt.optimize(object(), [], None, seed=-1, max_lm_calls=100)  # type: ignore[arg-type]
    _warned_here(record)


async def test_optimize_events_with_an_old_limit_argument_warns_naming_the_replacement() -> None:
    with pytest.warns(DeprecationWarning) as record, pytest.raises(aprompt.ConfigError, match="seed"):
        async with aprompt.optimize_events(
            object(),
            [],
            None,  # type: ignore[arg-type]
            seed=-1,
            max_lm_calls=100,
        ) as events:
            async for _event in events:
                pass
    _warned_here(record)


def test_optimize_sync_with_an_old_limit_argument_warns_naming_the_replacement() -> None:
    with pytest.warns(DeprecationWarning) as record, pytest.raises(aprompt.ConfigError, match="seed"):
        aprompt.optimize_sync(object(), [], None, seed=-1, max_lm_calls=100)  # type: ignore[arg-type]
    _warned_here(record)


def _as_limits(limit: int) -> dict[str, Any]:
    return {"limits": aprompt.Limits(max_lm_calls=limit)}


def _as_old_argument(limit: int) -> dict[str, Any]:
    return {"max_lm_calls": limit}


@pytest.mark.parametrize(
    ("first", "then"),
    [(_as_old_argument, _as_limits), (_as_limits, _as_old_argument)],
    ids=["old-then-limits", "limits-then-old"],
)
async def test_a_run_started_with_one_form_of_a_limit_resumes_with_the_other_spending_nothing(
    tmp_path: Path, first: Any, then: Any
) -> None:
    run_dir = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        async with (
            FakeOpenAIServer(responder=responder, api_key=TEST_API_KEY) as server,
            client(server) as lm,
        ):
            stopped = await qa_run(lm, run_dir, **first(100))
            after_stopped = len(server.chat_requests)
            again = await qa_run(lm, run_dir, **then(100))
            after_again = len(server.chat_requests)

    assert stopped.stopped_by == again.stopped_by == "max_lm_calls"
    assert after_again == after_stopped  # the same run, with the same budget, already spent
    assert (again.score, again.best_choice) == (stopped.score, stopped.best_choice)
    assert again.trials == stopped.trials
    assert (again.spent["lm_calls"], again.spent["tokens"]) == (
        stopped.spent["lm_calls"],
        stopped.spent["tokens"],
    )
