"""A run killed with SIGKILL at any point resumes to the uninterrupted result and repays little.

The child (:mod:`tests.run._optimize_worker`) optimizes against a fake server living in this process. The
server's responder counts the *distinct* requests it has seen — the position in the run's deterministic
flow, whatever was repeated after earlier kills — and kills the child when that position reaches the next
kill point. Kill points are drawn at random inside the phases of an uninterrupted reference run (the
seed is printed; ``APROMPT_KILL_SEED`` replays one).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest

import aprompt
from aprompt.run.journal import RunJournal
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer
from tests.optimize.world import World
from tests.run._optimize_worker import BUDGET, KEY_ENV_VAR, run_world, summary

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")]

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-world-kill-test"


class KillSwitch:
    """The World's responder, counting requests, that SIGKILLs ``child`` at the next kill point."""

    def __init__(self) -> None:
        self.world = World()
        self.total = 0
        self.seen: set[str] = set()
        self.kill_points: list[int] = []
        self.child: anyio.abc.Process | None = None

    @property
    def position(self) -> int:
        return len(self.seen)

    def restart_count(self) -> None:
        self.total = 0
        self.seen.clear()

    def __call__(self, request: ChatRequest) -> str:
        self.total += 1
        key = json.dumps([request.model, request.messages, request.params], sort_keys=True)
        new = key not in self.seen
        self.seen.add(key)
        # Only a new request moves the run on: repeats of what a killed child had in flight do not.
        if new and self.child is not None and self.kill_points and self.position >= self.kill_points[0]:
            self.kill_points.pop(0)
            os.kill(self.child.pid, signal.SIGKILL)
            self.child = None
        return self.world(request)


def kill_points(marks: list[tuple[str, int]], rng: random.Random) -> list[int]:
    """Six random positions, one inside each of six spans of the reference run's flow (its middle three
    fifths), from its (event, position) marks; a position ``p`` kills the child when its ``p``-th distinct
    request arrives."""
    at = {name: position for name, position in marks}
    trials = sorted({position for name, position in marks if name == "trial"})
    full = [position for name, position in marks if name == "full_eval"]
    spans = [
        (0, at["bootstrap_end"]),  # bootstrapping demos, the baseline's full evaluation beside
        (at["bootstrap_end"], at["propose_end"]),  # proposing instructions, the hand-written prompt's beside
        (at["propose_end"], trials[0]),  # the first batch of trials
        (trials[0], trials[1]),  # the second batch
        (trials[-2], trials[-1]),  # late trials (and a periodic full evaluation)
        (trials[-1], full[-1]),  # the final full evaluation
    ]
    assert all(low < high for low, high in spans), f"every phase makes new requests: {spans}"
    # Away from a span's ends: phases overlap (the pipeline), so where a phase ends in the flow of distinct
    # requests moves by a few from run to run, and a kill that close to its end may land in either phase.
    inner = [(low + (high - low) // 5, high - (high - low) // 5) for low, high in spans]
    return [rng.randint(low + 1, max(low + 1, high)) for low, high in inner]


def phase_of(run_dir: Path) -> str:
    """Where a killed run stopped, read from its journal."""
    with RunJournal.open(run_dir) as journal:
        kinds = journal.kinds()
    if "result" in kinds:
        return "finished"
    if "demo_sets" not in kinds:  # the baseline's evaluation goes on beside
        return "bootstrap"
    if kinds.get("proposals", 0) < 2 or kinds.get("screen", 0) < 2:  # proposed, then screened
        return "propose"
    if kinds.get("trial", 0) < BUDGET["n_trials"]:
        return "search"
    return "final"


async def run_child(switch: KillSwitch, base_url: str, run_dir: Path, out: Path) -> tuple[int, str]:
    command = [sys.executable, "-m", "tests.run._optimize_worker", base_url, str(run_dir), str(out)]
    env = {**os.environ, KEY_ENV_VAR: API_KEY}
    async with await anyio.open_process(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    ) as child:
        switch.child = child
        assert child.stderr is not None
        errors = bytearray()
        async for chunk in child.stderr:
            errors += chunk
        returncode = await child.wait()
    switch.child = None
    return returncode, errors.decode(errors="replace")


async def test_a_run_killed_in_every_phase_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    switch = KillSwitch()
    with anyio.fail_after(90):
        async with FakeOpenAIServer(responder=switch, api_key=API_KEY) as server:
            marks: list[tuple[str, int]] = []

            def mark(event: aprompt.Event) -> None:
                if isinstance(event, aprompt.PhaseFinished):
                    marks.append((f"{event.phase}_end", switch.position))
                elif isinstance(event, aprompt.TrialScored):
                    marks.append(("trial", switch.position))
                elif isinstance(event, aprompt.FullEvaluation):
                    marks.append(("full_eval", switch.position))

            reference = summary(
                await run_world(server.base_url, tmp_path / "reference", API_KEY, on_event=mark)
            )
            reference_calls = switch.total
            switch.restart_count()
            seed = int(os.environ.get("APROMPT_KILL_SEED", random.randrange(1 << 30)))
            points = kill_points(marks, random.Random(seed))
            switch.kill_points = list(points)

            run_dir, out = tmp_path / "run", tmp_path / "result.json"
            phases: list[str] = []
            for attempt in range(len(points) + 1):
                returncode, errors = await run_child(switch, server.base_url, run_dir, out)
                if attempt < len(points):
                    assert returncode == -signal.SIGKILL, (attempt, returncode, errors[-2000:])
                    phases.append(phase_of(run_dir))
                else:
                    assert returncode == 0, errors[-2000:]
            resumed = json.loads(out.read_text(encoding="utf-8"))

    repeated = switch.total - reference_calls
    fraction = repeated / reference_calls
    print(
        f"\nSIGKILL at positions {points} (APROMPT_KILL_SEED={seed}, phases {phases}): "
        f"{switch.total} LM calls over {len(points) + 1} processes against {reference_calls} "
        f"uninterrupted; repeated {repeated} ({fraction:.1%})"
    )
    # The fifth kill falls among the last trials; with trials running continuously, the last one may be
    # journaled already while the periodic evaluation beside it runs, which the journal reads as "final".
    assert phases[:4] == ["bootstrap", "propose", "search", "search"]
    assert phases[4] in ("search", "final") and phases[5] == "final"
    assert resumed == reference
    # Only calls in flight at a kill (answered, not yet cached) are paid twice.
    assert 0 <= fraction <= 0.1, (repeated, reference_calls)
