"""The same run in another process replays from the warm cache: nothing it sends follows the hash seed.

A set among an example's inputs iterates in an order that follows the process's hash seed; the prompts
showing it (the predictor's, the data summary's, the proposer's examples of good calls) must not, or the
same run in a new process sends new requests and may return another program.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aprompt.testing.fake_openai import FakeOpenAIServer
from tests.optimize.world import World
from tests.run._set_inputs_worker import KEY_ENV_VAR

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-hash-seed-test"


async def test_a_run_with_set_inputs_replays_in_a_process_of_another_hash_seed(tmp_path: Path) -> None:
    async with FakeOpenAIServer(responder=World(), api_key=API_KEY) as server:
        command = [sys.executable, "-m", "tests.run._set_inputs_worker", server.base_url, str(tmp_path)]
        results, sent = [], []
        for hash_seed in ("1", "2"):
            before = len(server.chat_requests)
            env = {**os.environ, KEY_ENV_VAR: API_KEY, "PYTHONHASHSEED": hash_seed}
            with anyio.fail_after(120):
                done = await anyio.run_process(
                    command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, check=False
                )
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
            results.append(json.loads(done.stdout))
            sent.append(len(server.chat_requests) - before)
    assert sent[0] > 0
    assert sent[1] == 0, "the second process sent requests its warm cache should have answered"
    assert results[1] == results[0]
