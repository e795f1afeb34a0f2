"""Instruction proposals of the embedded model, with and without the proposer's worked example.

For each single-stage bench task, the embedded model (SmolLM2-135M under llama.cpp) summarizes the
training data and describes the program as a run does, then proposes ``--n`` instructions for the task's
predictor with the proposer's worked example (:data:`aprompt._optimize.proposer_text.WORKED_EXAMPLE`) and
``--n`` without it: the same seeds, the same grounding, 3 training examples as the demos shown. It prints
how many proposals each way came out as instructions (the rest were dropped by the proposal filter after
three attempts), how many say something of the task (share a content word with its fields, instruction,
data summary or program description), how many start with an imperative verb, and every proposal, so a
reader can judge them.

    .venv/bin/python -m bench.proposals --n 10 --out bench/results/proposals_worked_example.md

Prints, does not assert: which proposals are good is the reader's judgement; the counts are the filter's.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

import aprompt
from aprompt._optimize.proposal_filter import _FIRST_PERSON, _imperative_start, on_task, task_vocabulary
from aprompt._optimize.propose import Grounding, Proposal, ProposalContext, propose_instruction
from aprompt._optimize.summaries import summarize_data, summarize_program
from bench.local_model import warm_local_lm
from bench.tasks import TASKS

SINGLE_STAGE = ("negate", "intent", "count")


async def propose_for(
    task_name: str, lm: aprompt.OpenAICompatibleLM, n: int, seed: int
) -> tuple[dict[bool, list[Proposal]], ProposalContext]:
    """``n`` proposals for the task's predictor with the worked example (key True) and without (False)."""
    task = TASKS[task_name]
    split = task.split(n_train=30, n_val=30, n_test=200)  # the quality benchmark's split
    train = task.examples(split.train)
    program = task.program()
    (name, predictor), *_ = aprompt.named_predictors(program)
    data = await summarize_data(train, lm, seed=seed)
    described = await summarize_program(program, [(name, predictor)], lm)
    context = ProposalContext(name, predictor, data.text, described.text)
    demos = [aprompt.Demo({**e.inputs, **e.labels}) for e in train[:3]]
    found: dict[bool, list[Proposal]] = {}
    for worked in (True, False):
        proposals: list[Proposal] = [None] * n  # type: ignore[list-item]

        async def one(index: int, worked: bool = worked, proposals: list[Proposal] = proposals) -> None:
            proposals[index - 1] = await propose_instruction(
                context,
                lm,
                index=index,
                grounding=Grounding(worked_example=worked),
                demos=demos,
                existing=[predictor.instruction],
                history=[(predictor.instruction, None)],
                seed=seed,
            )

        async with anyio.create_task_group() as group:
            for index in range(1, n + 1):
                group.start_soon(one, index)
        found[worked] = proposals
    return found, context


def starts_with_an_imperative(text: str) -> bool:
    """Whether the proposal's first word is capitalized and may be an imperative verb ("Rewrite ...",
    "Classify ..."): how an instruction usually starts, and how a remark, a made-up example or chat
    ("The sentence is ...", "I'm ready to help.") does not. A rough count: "Test-function to test" passes."""
    words = re.findall(r"[^\W\d_][\w'-]*", text)
    if not words or _FIRST_PERSON.match(text.lstrip("-*• ")):
        return False
    return words[0][0].isupper() and _imperative_start(words[0].lower())


def render(results: dict[str, tuple[dict[bool, list[Proposal]], ProposalContext]], command: str) -> str:
    lines = [
        "# Instruction proposals of the embedded model, with and without the proposer's worked example",
        "",
        f"command: `{command}`",
        "",
        "| task | worked example | proposals kept | of them sharing a word with the task | of them starting "
        "with an imperative |",
        "|---|---|---:|---:|---:|",
    ]
    for task_name, (found, context) in results.items():
        vocabulary = task_vocabulary(context.predictor, context.data_summary, context.program_summary)
        for worked in (True, False):
            kept = [p.instruction for p in found[worked] if p.instruction]
            on = sum(on_task(text, vocabulary) for text in kept)
            imperative = sum(starts_with_an_imperative(text) for text in kept)
            lines.append(
                f"| {task_name} | {'with' if worked else 'without'} | {len(kept)} of {len(found[worked])} "
                f"| {on} | {imperative} |"
            )
    for task_name, (found, context) in results.items():
        lines += ["", f"## {task_name}", "", f"Instruction as written: {context.predictor.instruction!r}", ""]
        lines += [f"Data summary (the embedded model's): {context.data_summary!r}", ""]
        lines += [f"Program description (the embedded model's): {context.program_summary!r}", ""]
        for worked in (True, False):
            lines.append(f"**{'With' if worked else 'Without'} the worked example:**")
            lines.append("")
            for proposal in found[worked]:
                shown = proposal.instruction or f"(dropped) {proposal.reason}"
                lines.append(f"- {' / '.join(shown.splitlines())[:300]}")
            lines.append("")
    return "\n".join(lines) + "\n"


async def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="proposals per task and way")
    parser.add_argument("--tasks", default=",".join(SINGLE_STAGE))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    command = "python -m bench.proposals " + " ".join(argv if argv is not None else [])
    started = time.monotonic()
    results = {}
    async with warm_local_lm(parallel=4, threads=2) as (lm, _):
        for task_name in args.tasks.split(","):
            results[task_name] = await propose_for(task_name, lm, args.n, args.seed)
    report = render(results, command.strip())
    report += f"\n{time.monotonic() - started:.0f} s in all.\n"
    print(report)
    if args.out is not None:
        args.out.write_text(report)
    return report


if __name__ == "__main__":
    import sys

    anyio.run(main, sys.argv[1:])
