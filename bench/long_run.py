"""Client CPU of one long run: a light MIPRO run with many trials in the simulated world of
``bench/regret.py`` (in-process, no latency), seed 0, so the figures are the client's own CPU.

Prints the CPU seconds of the run (``time.process_time``), the LM calls, the returned choice, and the ms
of CPU per trial over the first and the last 100 trials (``TrialScored`` events)::

    PYTHONPATH=$PWD .venv/bin/python -m bench.long_run 2000 -            # a fresh 2,000-trial run
    PYTHONPATH=$PWD .venv/bin/python -m bench.long_run 2000 /tmp/run     # with a run_dir; run it again
                                                                         # with the same run_dir to resume
    PYTHONPATH=$PWD .venv/bin/python -m bench.long_run 2000 - --profile out.prof   # under cProfile

See ``bench/results/throughput_cpu.md`` for the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import time

import anyio

import aprompt
from aprompt._optimize.events import Event
from bench.regret import N_TRAIN, PRESET_VAL_SIZE, WorldLM
from tests.optimize.world import TwoStageProgram, World, examples, metric


async def long_run(n_trials: int, run_dir: str | None) -> str:
    """One light run of ``n_trials`` trials, seed 0; its figures as one line."""
    marks: list[float] = []

    def on_event(event: Event) -> None:
        if type(event).__name__ == "TrialScored":
            marks.append(time.process_time())

    lm, started = WorldLM(World()), time.process_time()
    val = PRESET_VAL_SIZE["light"]
    result = await aprompt.optimize(
        TwoStageProgram(),
        examples(0, N_TRAIN),
        metric,
        valset=examples(N_TRAIN, N_TRAIN + val),
        lm=lm,
        budget={"preset": "light", "n_trials": n_trials},
        seed=0,
        run_dir=run_dir,
        on_event=on_event,
    )
    k = min(100, len(marks) - 1)
    first = 1000 * (marks[k] - marks[0]) / k if k > 0 else float("nan")
    last = 1000 * (marks[-1] - marks[-1 - k]) / k if k > 0 else float("nan")
    return (
        f"cpu {time.process_time() - started:.1f} s, {lm.calls} calls, {result.best_choice}; "
        f"ms/trial first {first:.1f}, last {last:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n_trials", type=int)
    parser.add_argument("run_dir", help="the run's run_dir, '-' for none")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the run to FILE")
    args = parser.parse_args()
    run_dir = None if args.run_dir == "-" else args.run_dir
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    line = anyio.run(long_run, args.n_trials, run_dir)
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    print(line)


if __name__ == "__main__":
    main()
