"""One meaning of "LM calls" everywhere: requests sent to the endpoints, retries included; cache hits
apart. The numbers of the report's card, its usage table, the command line's summary and the result agree
with each other and with what the server received, on a real run with a real SQLite cache."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

import aprompt
from aprompt.run.report import RESULT_FILE, write_report
from aprompt.testing._wire import Fault
from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import run_world

API_KEY = "sk-usage-numbers-test"
RATE_LIMITED = 3


def _run(run_dir: Path, *, fresh: bool) -> tuple[aprompt.OptimizeResult, int]:
    """One optimization into ``run_dir`` (its cache in ``run_dir/cache``); the first requests answered 429
    once each. Returns the result and the chat requests the server received."""

    async def main() -> tuple[aprompt.OptimizeResult, int]:
        async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
            server.queue_faults(*[Fault.rate_limited("0")] * RATE_LIMITED)
            result = await run_world(server.base_url, run_dir, API_KEY, resume=not fresh)
            return result, len(server.chat_requests)

    result, received = anyio.run(main)
    result.save(run_dir / RESULT_FILE)
    return result, received


def _card(page: str, label: str) -> int:
    found = re.search(rf'<div class="label">{label}</div><div class="value ">([\d,]+)</div>', page)
    assert found is not None, label
    return int(found.group(1).replace(",", ""))


def _total_row(page: str) -> list[int]:
    """The usage table's total row, whole numbers only (the seconds left out): from "LM calls sent" on."""
    row = page[page.index("<td><b>total</b></td>") :].split("</tr>")[0]
    return [int(v.replace(",", "")) for v in re.findall(r"<b>([\d,]+)</b>", row)]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[aprompt.OptimizeResult, int, str]]:
    """The same run twice on one cache: first sending its requests, then (started over) from the cache."""
    run_dir = tmp_path_factory.mktemp("usage") / "run"
    runs = []
    for fresh in (False, True):
        result, received = _run(run_dir, fresh=fresh)
        runs.append((result, received, write_report(run_dir).read_text(encoding="utf-8")))
    return runs


def test_lm_calls_are_the_requests_the_server_received_retries_included(
    two_runs: list[tuple[aprompt.OptimizeResult, int, str]],
) -> None:
    result, received, page = two_runs[0]
    usage = result.usage
    assert usage.retries >= RATE_LIMITED and usage.rate_limited == RATE_LIMITED
    assert usage.lm_calls == usage.requests == received == result.spent["lm_calls"]
    assert _card(page, "LM calls sent") == received
    sent, retries, hits, answered = _total_row(page)[:4]
    assert (sent, retries, hits, answered) == (received, usage.retries, usage.cache_hits, usage.calls)


def test_calls_answered_are_cache_hits_plus_requests_that_were_not_retries(
    two_runs: list[tuple[aprompt.OptimizeResult, int, str]],
) -> None:
    for result, _, page in two_runs:
        usage = result.usage
        assert usage.errors == 0
        assert usage.calls == usage.cache_hits + usage.lm_calls - usage.retries
        assert _card(page, "Cache hits") == usage.cache_hits


def test_a_run_answered_from_the_cache_sends_no_lm_call(
    two_runs: list[tuple[aprompt.OptimizeResult, int, str]],
) -> None:
    (first, _, _), (again, received, page) = two_runs
    assert received == 0 and again.usage.lm_calls == 0 and _card(page, "LM calls sent") == 0
    assert again.usage.cache_hits == again.usage.calls == first.usage.calls
    assert again.score == first.score


def test_the_summary_words_the_same_numbers(two_runs: list[tuple[aprompt.OptimizeResult, int, str]]) -> None:
    result, received, _ = two_runs[0]
    usage = result.usage
    assert usage.describe().startswith(
        f"{received:,} LM calls sent ({usage.retries:,} retries), {usage.cache_hits:,} cache hits, "
        f"{usage.total_tokens:,} tokens, {RATE_LIMITED} rate-limited (429)"
    )


def test_a_resumed_run_s_card_counts_the_lm_calls_of_every_call(tmp_path: Path) -> None:
    """The card says what max_lm_calls counts, the run's calls before a resume included; the usage table,
    which covers the last call alone, says so."""
    run_dir = tmp_path / "run"

    async def main(stop_after: int | None) -> aprompt.OptimizeResult | None:
        seen = 0
        async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
            with anyio.CancelScope() as scope:

                def stop_at(event: aprompt.Event) -> None:
                    nonlocal seen
                    seen += 1
                    if seen == stop_after:
                        scope.cancel()

                return await run_world(server.base_url, run_dir, API_KEY, on_event=stop_at)
        return None

    assert anyio.run(main, 40) is None
    result = anyio.run(main, None)
    assert result is not None
    result.save(run_dir / RESULT_FILE)
    page = write_report(run_dir).read_text(encoding="utf-8")
    run_calls = int(result.spent["lm_calls"])
    assert run_calls > result.usage.lm_calls  # the first call sent most of them
    assert _card(page, "LM calls sent") == run_calls
    assert _total_row(page)[0] == result.usage.lm_calls
    assert f"the run sent {run_calls:,} LM calls in all" in page
    # Hits are counted for the last call alone: beside the run's LM calls, the card says so.
    assert _card(page, "Cache hits, last call") == result.usage.cache_hits
    # The Time card is the run's too (what max_time counts), not the last call's.
    assert result.spent["seconds"] > result.seconds
    assert f">{result.spent['seconds']:.0f} s<" in page
