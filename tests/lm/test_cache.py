"""The LM response cache: keys, LRU, SQLite file shared across processes, single-flight front."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aprompt._errors import CacheError, ConfigError, ContentFilteredError
from aprompt.lm.cache import (
    CACHE_FILE_NAME,
    CacheStats,
    MemoryCache,
    ResponseCache,
    SQLiteCache,
    default_cache_dir,
    request_key,
)
from aprompt.lm.openai import OpenAICompatibleLM
from aprompt.lm.types import Completion, Message, TokenUsage
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, Fault

WORKER = Path(__file__).with_name("_cache_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def key_of(name: str) -> str:
    """The key the worker process uses for entry ``name``."""
    return request_key(model="m", messages=[{"role": "user", "content": name}], params={})


class CountingCompute:
    """A ``compute`` callable that records its calls and answers ``text``."""

    def __init__(self, text: str = "answer", *, delay: float = 0.0) -> None:
        self.text = text
        self.delay = delay
        self.calls = 0

    async def __call__(self) -> Completion:
        self.calls += 1
        if self.delay:
            await anyio.sleep(self.delay)
        else:
            await anyio.lowlevel.checkpoint()
        return Completion(self.text, TokenUsage(11, 7), "served-model", "stop")


async def cached_once_in(directory: Path, name: str) -> None:
    """Answer entry ``name`` (its text is its name) into the cache in ``directory``."""
    with ResponseCache.in_directory(directory) as cache:
        await cache.get_or_compute(key_of(name), CountingCompute(name))


def run_worker(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def start_worker(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


# --- request_key -------------------------------------------------------------------------------

MESSAGES: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
]
PARAMS: dict[str, Any] = {"temperature": 0.7, "max_tokens": 64, "stop": ["\n\n"]}


def base_key(**changes: Any) -> str:
    parts: dict[str, Any] = {
        "model": "m",
        "messages": MESSAGES,
        "params": PARAMS,
        "rollout": 3,
        "namespace": "",
    }
    return request_key(**{**parts, **changes})


def test_request_key_is_a_sha256_hex_digest() -> None:
    key = base_key()
    assert len(key) == 64
    assert set(key) <= set("0123456789abcdef")


def test_request_key_format_is_pinned() -> None:
    # Changing the key format silently orphans every cache on disk: bump _KEY_FORMAT, then this.
    key = request_key(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        params={"temperature": 0.0},
        rollout=1,
        namespace="ns",
    )
    assert key == "afe85bdf0b437f359e8258ca9cf2ac220b8c646d7dcfcc2b67e5acf793442e26"


def test_request_key_is_stable_under_dict_reordering() -> None:
    reordered_params = {"stop": ["\n\n"], "max_tokens": 64, "temperature": 0.7}
    reordered_messages: list[Message] = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    nested_a = {"response_format": {"type": "json", "schema": {"a": 1, "b": 2}}}
    nested_b = {"response_format": {"schema": {"b": 2, "a": 1}, "type": "json"}}
    assert base_key(params=reordered_params, messages=reordered_messages) == base_key()
    assert base_key(params=nested_a) == base_key(params=nested_b)


def test_request_key_ignores_none_params() -> None:
    assert base_key(params={**PARAMS, "seed": None}) == base_key()


@pytest.mark.parametrize(
    "change",
    [
        {"model": "m2"},
        {"messages": [MESSAGES[0], {"role": "assistant", "content": "Capital of France?"}]},
        {"messages": [MESSAGES[0], {"role": "user", "content": "Capital of Spain?"}]},
        {"messages": MESSAGES[1:]},
        {"messages": [*MESSAGES, {"role": "user", "content": ""}]},
        {"params": {**PARAMS, "temperature": 0.8}},
        {"params": {**PARAMS, "top_p": 0.9}},
        {"params": {"temperature": 0.7, "max_tokens": 64}},
        {"rollout": 4},
        {"namespace": "other"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_request_key_changes_with_each_part(change: dict[str, Any]) -> None:
    assert base_key(**change) != base_key()


def test_request_key_does_not_confuse_content_with_structure() -> None:
    joined: list[Message] = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    merged: list[Message] = [{"role": "user", "content": 'a"],["user","b'}]
    assert base_key(messages=joined) != base_key(messages=merged)


def test_request_key_rejects_params_without_a_json_form() -> None:
    with pytest.raises(ConfigError, match="not JSON-serializable"):
        base_key(params={"logit_bias": object()})
    with pytest.raises(ConfigError):
        base_key(params={"temperature": float("nan")})


def test_request_key_takes_dict_keys_of_mixed_types_as_their_json_form() -> None:
    # JSON writes every key as a string, so this logit_bias is sent as {"1": 2, "50": -1}: the same key.
    mixed = base_key(params={**PARAMS, "logit_bias": {"50": -1, 1: 2}})
    assert mixed == base_key(params={**PARAMS, "logit_bias": {"1": 2, "50": -1}})
    assert mixed != base_key(params={**PARAMS, "logit_bias": {"1": 2, "50": -2}})
    with pytest.raises(ConfigError, match="cannot build a cache key"):
        base_key(params={"logit_bias": {(1, 2): 3}})


def test_request_key_takes_text_with_a_lone_surrogate() -> None:
    # Text read with errors="surrogateescape" holds lone surrogates: sent as JSON escapes, so it needs a key.
    def key(content: str) -> str:
        return base_key(messages=[{"role": "user", "content": content}])

    assert key("caf\udce9") == key("caf\udce9")
    assert len({key("caf\udce9"), key("caf\udce8"), key("caf\ufffd"), key("caf")}) == 4


# --- MemoryCache --------------------------------------------------------------------------------


def test_memory_cache_evicts_the_least_recently_used_entry() -> None:
    cache = MemoryCache(max_entries=3)
    for name in "abc":
        cache.put(name, Completion(name))
    assert cache.get("a") == Completion("a")  # "b" is now the least recently used
    cache.put("d", Completion("d"))
    assert "b" not in cache
    assert [name in cache for name in "acd"] == [True, True, True]
    assert len(cache) == 3


def test_memory_cache_rejects_a_size_below_one() -> None:
    with pytest.raises(ConfigError):
        MemoryCache(max_entries=0)


@pytest.mark.parametrize("max_entries", [2.5, "10", True])
def test_memory_cache_rejects_a_size_that_is_not_an_integer(max_entries: Any) -> None:
    with pytest.raises(ConfigError, match="max_entries must be an integer"):
        ResponseCache.memory_only(max_entries)


# --- ResponseCache: hits and misses -------------------------------------------------------------


@pytest.mark.anyio
async def test_fresh_completion_is_not_cached_and_a_hit_is(anyio_backend: str) -> None:
    cache = ResponseCache.memory_only()
    compute = CountingCompute()
    fresh, hit = await cache.get_or_compute("k", compute)
    again, hit_again = await cache.get_or_compute("k", compute)
    assert (hit, fresh.cached) == (False, False)
    assert (hit_again, again.cached) == (True, True)
    assert again == Completion("answer", TokenUsage(11, 7), "served-model", "stop", cached=True)
    assert compute.calls == 1


@pytest.mark.anyio
async def test_compute_result_marked_cached_is_returned_uncached(anyio_backend: str) -> None:
    async def already_marked() -> Completion:
        return Completion("x", cached=True)

    completion, hit = await ResponseCache.memory_only().get_or_compute("k", already_marked)
    assert (completion.cached, hit) == (False, False)


@pytest.mark.anyio
async def test_disk_hit_round_trips_the_completion_and_is_promoted_to_memory(
    anyio_backend: str, tmp_path: Path
) -> None:
    with ResponseCache.in_directory(tmp_path) as writer:
        await writer.get_or_compute("k", CountingCompute())
    with ResponseCache.in_directory(tmp_path) as reader:
        compute = CountingCompute("not this")
        from_disk, hit = await reader.get_or_compute("k", compute)
        assert reader.memory is not None and "k" in reader.memory
        await reader.get_or_compute("k", compute)
        assert hit and compute.calls == 0
        assert from_disk == Completion("answer", TokenUsage(11, 7), "served-model", "stop", cached=True)
        assert reader.stats == CacheStats(memory_hits=1, disk_hits=1)


@pytest.mark.anyio
async def test_stats_count_memory_disk_coalesced_and_misses(anyio_backend: str, tmp_path: Path) -> None:
    with ResponseCache.in_directory(tmp_path) as first:
        await first.get_or_compute("on-disk", CountingCompute())
    with ResponseCache.in_directory(tmp_path) as cache:
        slow = CountingCompute(delay=0.05)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(cache.get_or_compute, "new", slow)
        await cache.get_or_compute("on-disk", slow)
        await cache.get_or_compute("on-disk", slow)
        stats = cache.stats
    assert stats == CacheStats(memory_hits=1, disk_hits=1, coalesced=2, misses=1)
    assert (stats.hits, stats.calls) == (4, 5)


@pytest.mark.anyio
async def test_disabled_cache_always_computes(anyio_backend: str) -> None:
    cache = ResponseCache.disabled()
    compute = CountingCompute(delay=0.01)
    results: list[tuple[Completion, bool]] = []

    async def call() -> None:
        results.append(await cache.get_or_compute("k", compute))

    await call()
    await call()
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(call)
    assert compute.calls == 7
    assert all(not hit and not completion.cached for completion, hit in results)
    assert not cache.enabled and len(cache) == 0


@pytest.mark.anyio
async def test_clear_forgets_memory_and_disk(anyio_backend: str, tmp_path: Path) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        for name in ("a", "b"):
            await cache.get_or_compute(name, CountingCompute())
        cache.clear()
        assert len(cache) == 0 and cache.memory is not None and len(cache.memory) == 0
        compute = CountingCompute()
        _, hit = await cache.get_or_compute("a", compute)
    assert (hit, compute.calls) == (False, 1)


@pytest.mark.anyio
async def test_closed_cache_raises_cache_error(anyio_backend: str, tmp_path: Path) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        pass
    with pytest.raises(CacheError, match="closed"):
        await cache.get_or_compute("k", CountingCompute())
    cache.close()  # idempotent


# --- ResponseCache: concurrency -----------------------------------------------------------------


@pytest.mark.anyio
async def test_fifty_identical_concurrent_calls_compute_once(anyio_backend: str, tmp_path: Path) -> None:
    compute = CountingCompute(delay=0.02)
    results: list[tuple[Completion, bool]] = []
    with ResponseCache.in_directory(tmp_path) as cache:

        async def call() -> None:
            results.append(await cache.get_or_compute("k", compute))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
        stats = cache.stats
    assert compute.calls == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 49
    assert all(completion.cached == hit for completion, hit in results)
    assert (stats.misses, stats.coalesced) == (1, 49)


@pytest.mark.anyio
async def test_two_hundred_concurrent_tasks_share_one_cache(anyio_backend: str, tmp_path: Path) -> None:
    computes = {f"k{i}": CountingCompute(f"text {i}", delay=0.001 * (i % 7)) for i in range(50)}
    results: dict[int, tuple[Completion, bool]] = {}
    with ResponseCache.in_directory(tmp_path) as cache:

        async def call(task: int) -> None:
            key = f"k{task % 50}"
            results[task] = await cache.get_or_compute(key, computes[key])

        async with anyio.create_task_group() as tg:
            for task in range(200):
                tg.start_soon(call, task)
        assert len(cache) == 50
    assert all(compute.calls == 1 for compute in computes.values())
    assert all(results[task][0].text == f"text {task % 50}" for task in range(200))
    assert sum(not hit for _, hit in results.values()) == 50


@pytest.mark.anyio
async def test_leader_error_reaches_every_waiter_and_nothing_is_stored(
    anyio_backend: str, tmp_path: Path
) -> None:
    release = anyio.Event()
    calls = 0

    async def failing() -> Completion:
        nonlocal calls
        calls += 1
        await release.wait()
        raise ValueError("endpoint exploded")

    errors: list[BaseException] = []
    with ResponseCache.in_directory(tmp_path) as cache:

        async def call() -> None:
            try:
                await cache.get_or_compute("k", failing)
            except ValueError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert calls == 1 and len(errors) == 10
        assert all(error is errors[0] for error in errors)
        assert len(cache) == 0 and cache.memory is not None and len(cache.memory) == 0

        compute = CountingCompute()
        completion, hit = await cache.get_or_compute("k", compute)
    assert (completion.text, hit, compute.calls) == ("answer", False, 1)


@pytest.mark.anyio
async def test_a_client_waiting_on_another_clients_failed_call_asks_its_own_endpoint(
    anyio_backend: str,
) -> None:
    # Two clients of one model on other providers share a cache: the error of the one whose provider
    # withholds the reply must not reach the other's identical call, which its own provider answers.
    cache = ResponseCache.memory_only()
    messages: list[Message] = [{"role": "user", "content": "q"}]
    asked, release = anyio.Event(), anyio.Event()

    async def withheld(request: ChatRequest) -> Fault:
        asked.set()
        await release.wait()
        return Fault.reply("", finish_reason="content_filter")

    outcomes: dict[str, str] = {}
    async with FakeOpenAIServer(responder=withheld) as strict, FakeOpenAIServer() as lenient:
        async with (
            OpenAICompatibleLM("m", strict.base_url, api_key="k1", cache=cache, max_retries=0) as failing,
            OpenAICompatibleLM("m", lenient.base_url, api_key="k2", cache=cache) as healthy,
        ):

            async def call(name: str, lm: OpenAICompatibleLM) -> None:
                try:
                    outcomes[name] = (await lm.chat(messages)).text
                except ContentFilteredError as exc:
                    outcomes[name] = type(exc).__name__

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, "failing", failing)
                    await asked.wait()
                    tg.start_soon(call, "healthy", healthy)
                    await anyio.wait_all_tasks_blocked()  # the healthy call waits for the failing one
                    release.set()
        assert outcomes == {"failing": "ContentFilteredError", "healthy": "Answer: ok"}
        assert len(lenient.chat_requests) == 1
    assert cache.stats.misses == 2


@pytest.mark.anyio
async def test_cancelled_leader_hands_over_to_one_waiter(anyio_backend: str) -> None:
    cache = ResponseCache.memory_only()
    leader_started = anyio.Event()

    async def never_finishes() -> Completion:
        leader_started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    takeover = CountingCompute("from a waiter", delay=0.01)
    results: list[tuple[Completion, bool]] = []
    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await cache.get_or_compute("k", never_finishes)

    async def waiter() -> None:
        results.append(await cache.get_or_compute("k", takeover))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await leader_started.wait()
            for _ in range(5):
                tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            leader_scope.cancel()
    assert leader_scope.cancelled_caught
    assert takeover.calls == 1
    assert sorted(hit for _, hit in results) == [False, True, True, True, True]
    assert {completion.text for completion, _ in results} == {"from a waiter"}


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_the_leader_untouched(anyio_backend: str) -> None:
    cache = ResponseCache.memory_only()
    compute = CountingCompute(delay=0.05)
    results: list[tuple[Completion, bool]] = []

    async def leader() -> None:
        results.append(await cache.get_or_compute("k", compute))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.01) as waiter_scope:
            await cache.get_or_compute("k", compute)
    assert waiter_scope.cancelled_caught
    assert compute.calls == 1 and results[0][1] is False


@pytest.mark.anyio
async def test_an_answer_that_arrived_before_a_cancellation_is_stored_on_disk(
    anyio_backend: str, tmp_path: Path
) -> None:
    scope = anyio.CancelScope()

    async def answered_as_the_caller_cancels() -> Completion:
        scope.cancel()  # lands at the next checkpoint: after the answer is paid for
        return Completion("paid for", TokenUsage(11, 7), "served-model", "stop")

    with ResponseCache.in_directory(tmp_path) as cache, scope:
        await cache.get_or_compute("k", answered_as_the_caller_cancels)
        await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    with ResponseCache.in_directory(tmp_path) as again:
        completion, hit = await again.get_or_compute("k", CountingCompute("asked again"))
    assert (completion.text, hit) == ("paid for", True)


# --- SQLiteCache: the file -----------------------------------------------------------------------


def test_in_directory_creates_the_directory_and_a_wal_file(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "cache"
    with ResponseCache.in_directory(directory):
        conn = sqlite3.connect(directory / CACHE_FILE_NAME)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()


@pytest.mark.anyio
async def test_only_the_completion_is_stored(anyio_backend: str, tmp_path: Path) -> None:
    secret_prompt = "PROMPT-TEXT-4f1d"
    key = request_key(model="m", messages=[{"role": "user", "content": secret_prompt}], params={"seed": 9})
    with ResponseCache.in_directory(tmp_path) as cache:
        await cache.get_or_compute(key, CountingCompute())
    conn = sqlite3.connect(tmp_path / CACHE_FILE_NAME)
    try:
        rows = conn.execute("SELECT key, value, created FROM completions").fetchall()
    finally:
        conn.close()
    [(stored_key, value, created)] = rows
    assert stored_key == key and abs(created - time.time()) < 60
    stored = json.loads(value)
    assert len(stored.pop("checksum")) == 64  # a SHA-256 over the key and the completion
    assert stored == {
        "text": "answer",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "model": "served-model",
        "finish_reason": "stop",
    }
    for path in os.listdir(tmp_path):
        assert secret_prompt.encode() not in await anyio.Path(tmp_path, path).read_bytes()


@pytest.mark.anyio
async def test_disk_keeps_the_first_completion_stored_under_a_key(anyio_backend: str, tmp_path: Path) -> None:
    with SQLiteCache(tmp_path / CACHE_FILE_NAME) as disk:
        await disk.put("k", Completion("first"))
        await disk.put("k", Completion("second"))
        assert disk.get("k") == Completion("first", cached=True)
        assert len(disk) == 1


@pytest.mark.anyio
async def test_a_reply_whose_model_name_holds_a_lone_surrogate_is_returned_and_stored(
    anyio_backend: str, tmp_path: Path
) -> None:
    # JSON lets a server name its model with half a surrogate pair ("\\ud83d"): a str with no UTF-8 form.
    # Storing it raised UnicodeEncodeError out of the call, after the answer was paid for.
    served = "m-\ud83d"
    messages: list[Message] = [{"role": "user", "content": "q"}]
    async with FakeOpenAIServer(responder=lambda request: ("Answer: ok", {"model": served})) as server:
        for _ in range(2):  # the second cache, on the same file, answers from it
            with ResponseCache.in_directory(tmp_path) as cache:
                async with OpenAICompatibleLM("m", server.base_url, api_key="", cache=cache) as lm:
                    completion = await lm.chat(messages)
            assert (completion.text, completion.model) == ("Answer: ok", served)
        assert completion.cached and len(server.chat_requests) == 1


async def test_the_file_holds_replies_of_a_few_kilobytes_without_blowing_up(
    anyio_backend: str, tmp_path: Path
) -> None:
    """A long run's cache grows with what it holds: replies of about a kilobyte take about their own size
    on disk, not a 4 KB overflow page each."""
    stored = 0
    with ResponseCache.in_directory(tmp_path) as cache:
        for i in range(600):
            text = f"reply {i} " + "x" * (800 + i)
            stored += len(text) + 200  # the entry's other fields and its checksum
            await cache.get_or_compute(key_of(f"big-{i}"), CountingCompute(text))
    size = (tmp_path / CACHE_FILE_NAME).stat().st_size  # the last close checkpoints the WAL into it
    assert not (tmp_path / f"{CACHE_FILE_NAME}-wal").exists()
    assert size < 1.6 * stored, (size, stored)
    with SQLiteCache(tmp_path / CACHE_FILE_NAME) as disk:
        assert disk.get(key_of("big-599")) == Completion(
            "reply 599 " + "x" * 1399, TokenUsage(11, 7), "served-model", "stop", cached=True
        )


@pytest.mark.anyio
async def test_an_infinite_busy_timeout_waits_for_another_writer(anyio_backend: str, tmp_path: Path) -> None:
    # SQLite takes the timeout as a C int of milliseconds: inf overflowed into "never wait", and the
    # answer was dropped at once while another process wrote.
    with SQLiteCache(tmp_path / CACHE_FILE_NAME, busy_timeout=math.inf) as disk:
        other = sqlite3.connect(tmp_path / CACHE_FILE_NAME, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock for a while
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(disk.put, "k", Completion("answer"))
                await anyio.sleep(0.3)
                other.execute("COMMIT")
        finally:
            other.close()
        assert disk.get("k") == Completion("answer", cached=True)


@pytest.mark.parametrize("busy_timeout", [-1, math.nan, "30", True])
def test_a_busy_timeout_that_is_no_wait_is_refused(tmp_path: Path, busy_timeout: Any) -> None:
    # NaN and negative timeouts mean "never wait" to SQLite: a busy file would drop every answer.
    with pytest.raises(ConfigError, match="busy_timeout must be a number of seconds >= 0"):
        ResponseCache.in_directory(tmp_path, busy_timeout=busy_timeout)


def test_garbage_file_raises_cache_error(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE_NAME).write_bytes(b"not a database\n" + bytes(range(256)) * 20)
    with pytest.raises(CacheError, match="not a database") as info:
        ResponseCache.in_directory(tmp_path)
    assert info.value.path == str(tmp_path / CACHE_FILE_NAME)
    assert "deleting the file is safe" in str(info.value)  # what to do, not only what is wrong


def test_foreign_sqlite_database_raises_cache_error(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / CACHE_FILE_NAME)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(CacheError, match="another program"):
        ResponseCache.in_directory(tmp_path)


def test_newer_schema_version_raises_cache_error(tmp_path: Path) -> None:
    SQLiteCache(tmp_path / CACHE_FILE_NAME).close()
    conn = sqlite3.connect(tmp_path / CACHE_FILE_NAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(CacheError, match="schema version 99"):
        SQLiteCache(tmp_path / CACHE_FILE_NAME)


def test_a_directory_where_the_file_should_be_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / CACHE_FILE_NAME).mkdir()
    with pytest.raises(CacheError, match="the path is a directory, not a file; point the cache elsewhere"):
        ResponseCache.in_directory(tmp_path)


@pytest.mark.anyio
async def test_a_cache_another_process_holds_locked_is_not_called_safe_to_delete(
    anyio_backend: str, tmp_path: Path
) -> None:
    """A sound file another connection holds locked past the busy timeout (a process in exclusive locking
    mode, a backup) is said to be locked, with what to do: not called unusable and safe to delete, which
    would throw away answers paid for."""
    await cached_once_in(tmp_path, "paid")
    other = sqlite3.connect(tmp_path / CACHE_FILE_NAME, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode = EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("COMMIT")  # the connection keeps the file's exclusive lock until it closes
        with pytest.raises(CacheError) as info:
            ResponseCache.in_directory(tmp_path, busy_timeout=0)
    finally:
        other.close()
    message = str(info.value)
    assert "locked" in message and "busy_timeout" in message, message
    assert "deleting the file is safe" not in message and "not a usable" not in message, message
    with ResponseCache.in_directory(tmp_path) as cache:
        completion, hit = await cache.get_or_compute(key_of("paid"), CountingCompute("asked again"))
    assert (completion.text, hit) == ("paid", True)


OPEN_AS_A_READER = """
import os, sys
from aprompt._errors import CacheError
from aprompt.lm.cache import ResponseCache
if os.geteuid() == 0:  # root writes anywhere: open as a user who cannot write the folder
    os.setuid(65534)
try:
    ResponseCache.in_directory(sys.argv[1]).close()
except CacheError as exc:
    print(exc)
"""


def test_a_cache_in_a_read_only_folder_is_not_blamed_on_the_file() -> None:
    """WAL must create its -wal and -shm files beside the cache: a folder the user cannot write is said
    to be the problem, not the file (which holds paid-for answers, and must not be called safe to delete)."""
    shelf = Path(tempfile.mkdtemp(prefix="aprompt-ro-"))  # not under pytest's base, which only root enters
    folder = shelf / "cache"
    try:
        assert run_worker("write", folder, "paid", 3).returncode == 0
        before = (folder / CACHE_FILE_NAME).read_bytes()
        folder.chmod(0o555)
        shelf.chmod(0o755)
        done = subprocess.run(
            [sys.executable, "-c", OPEN_AS_A_READER, str(folder)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert f"this user may not write its folder {folder}" in done.stdout
        assert "fix the permissions or point the cache elsewhere" in done.stdout
        assert "deleting the file is safe" not in done.stdout
        assert (folder / CACHE_FILE_NAME).read_bytes() == before
    finally:
        folder.chmod(0o755)
        shutil.rmtree(shelf)


def test_default_cache_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APROMPT_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("APROMPT_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "aprompt"


# --- SQLiteCache: other processes ---------------------------------------------------------------


@pytest.mark.anyio
async def test_entries_written_here_are_read_by_a_new_process(anyio_backend: str, tmp_path: Path) -> None:
    with ResponseCache.in_directory(tmp_path) as cache:
        for i in range(5):
            name = f"here-{i}"
            await cache.get_or_compute(key_of(name), CountingCompute(name))
    done = run_worker("read", tmp_path, "here", 6)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[f"here-{i}", True] for i in range(5)] + [None]


@pytest.mark.anyio
async def test_entries_written_by_another_process_are_read_here(anyio_backend: str, tmp_path: Path) -> None:
    done = run_worker("write", tmp_path, "there", 5)
    assert done.returncode == 0, done.stderr
    compute = CountingCompute("recomputed")
    with ResponseCache.in_directory(tmp_path) as cache:
        results = [await cache.get_or_compute(key_of(f"there-{i}"), compute) for i in range(5)]
    assert compute.calls == 0
    assert results == [
        (Completion(f"there-{i}", TokenUsage(3, 4), "m", "stop", True), True) for i in range(5)
    ]


def test_two_processes_writing_and_reading_one_file_lose_nothing(tmp_path: Path) -> None:
    start = tmp_path / "start"
    count, shared = 300, 100
    workers = [
        start_worker("stress", tmp_path, who, other, count, shared, start)
        for who, other in (("p1", "p2"), ("p2", "p1"))
    ]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{who}.ready").exists() for who in ("p1", "p2")):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.005)
    start.touch()
    outputs = [worker.communicate(timeout=60) for worker in workers]
    summaries = []
    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert "locked" not in stderr
        summaries.append(json.loads(stdout))
    assert all(summary["stored"] == count + shared for summary in summaries)
    # They really ran at the same time.
    assert max(s["began"] for s in summaries) < min(s["ended"] for s in summaries)

    with SQLiteCache(tmp_path / CACHE_FILE_NAME) as disk:
        assert len(disk) == 2 * count + shared
        for who in ("p1", "p2"):
            for i in range(count):
                found = disk.get(key_of(f"{who}-{i}"))
                assert found is not None and found.text == f"{who}-{i}"
        for i in range(shared):
            found = disk.get(key_of(f"shared-{i}"))
            assert found is not None
            assert found.text in (f"shared-{i}-by-p1", f"shared-{i}-by-p2")
