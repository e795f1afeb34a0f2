"""A run in words, as ``aprompt show`` prints it: :func:`describe_run`, and the sentences the HTML report
shares with it (why the returned program was chosen, what of the journal could not be read).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aprompt._optimize.per_example import describe_examples
from aprompt._terminal import terminal_safe
from aprompt.run._report_view import PromptView, RunView

__all__ = ["AS_WRITTEN", "describe_run", "pick_text", "score_text", "unreadable_text"]


def score_text(value: Any) -> str:
    """A score as the report shows it: three decimals, or a dash for none."""
    return "–" if value is None else f"{float(value):.3f}"


#: What an empty choice stands for: the baseline, every predictor's own prompt (never a blank).
AS_WRITTEN = "the program as written"


def _choice_text(choice: Mapping[str, int]) -> str:
    return " ".join(f"{key}={value}" for key, value in choice.items()) or AS_WRITTEN


def _shows_format(view: RunView, name: str, prompt: PromptView) -> bool:
    """Whether a prompt's reply format is worth a word: it was searched, or it is not the default."""
    searched = f"{name}.format" in (view.best_choice or {})
    return prompt.reply_format is not None and (searched or prompt.reply_format != "fields")


def pick_text(pick: Mapping[str, Any] | None) -> str | None:
    """Why the returned program was chosen, in words (``None`` when the run did not record it)."""
    if not pick or not pick.get("reason"):
        return None
    return str(pick["reason"])


def unreadable_text(view: RunView, *, limit: int = 5) -> str | None:
    """What of the journal could not be read and what to do, in words (``None`` when all could)."""
    if not view.unreadable:
        return None
    n = len(view.unreadable)
    named = "; ".join(view.unreadable[:limit]) + (f"; and {n - limit} more" if n > limit else "")
    return (
        f"{n} journal record{'s' if n > 1 else ''} could not be read and {'are' if n > 1 else 'is'} left "
        f"out ({named}); the rest is shown. optimize refuses to resume from such a record: resume=False "
        "(on the command line --fresh) or another run_dir starts the run over"
    )


def describe_run(view: RunView, *, max_instruction: int = 300, max_examples: int = 5) -> str:
    """Readable text of a run: its state, the trials, the full evaluations, the best prompts, why they
    were chosen, and the validation examples they still fail (the first ``max_examples``). Control
    characters in the run's texts are shown as escapes (``\\x1b``), never sent to the terminal."""
    return terminal_safe(_describe(view, max_instruction, max_examples))


def _describe(view: RunView, max_instruction: int, max_examples: int) -> str:
    lines = [f"run {view.run_dir}: {view.strategy}, seed {view.config.get('seed', '?')}"]
    state = "finished" if view.finished else "not finished (resume it with the same command)"
    if view.result_unreadable:
        state = "unknown (its result record cannot be read)"
    if view.stopped_by:
        state += f", stopped by {view.stopped_by}"
    lines.append(
        f"state: {state}; {len(view.trials)} trials, {len(view.full_evals)} full evaluations; "
        f"baseline {score_text(view.baseline_score)} -> best {score_text(view.best_score)}"
    )
    if (unreadable := unreadable_text(view)) is not None:
        lines.append(f"warning: {unreadable}")
    lines += ["", "trials (mini-batch scores):", f"  {'#':>4}  {'score':>6}  choice"]
    for trial in view.trials:
        lines.append(
            f"  {trial['number']:>4}  {score_text(trial.get('score')):>6}  {_choice_text(trial['choice'])}"
        )
    lines += ["", "full evaluations (validation set):", f"  {'after':>5}  {'score':>6}  choice"]
    for full in view.full_evals:
        lines.append(
            f"  {full['after_trial']:>5}  {score_text(full['score']):>6}  {_choice_text(full['choice'])}"
        )
    if view.best_choice is None:
        lines += ["", "no combination fully evaluated yet"]
        return "\n".join(lines)
    lines += ["", f"best prompts ({score_text(view.best_score)}: {_choice_text(view.best_choice)}):"]
    for name in view.predictors:
        prompt = view.prompt(name, view.best_choice)
        index = view.best_choice.get(f"{name}.instruction", 0)
        text = prompt.instruction
        if text is None:
            text = "(the original instruction)" if index == 0 else f"(candidate #{index}, not journaled)"
        elif len(text) > max_instruction:
            text = text[: max_instruction - 1] + "…"
        reply = f", {prompt.reply_format} reply" if _shows_format(view, name, prompt) else ""
        lines.append(f"  {name}: instruction #{index}, {len(prompt.demos)} demos{reply}")
        lines += [f"    {line}" for line in text.splitlines() or [""]]
    reason = pick_text(view.pick)
    if reason is not None:
        lines += ["", f"why this program: {reason}"]
    if view.examples is not None and len(view.examples):
        lines += ["", *describe_examples(view.examples, limit=max_examples)]
    return "\n".join(lines)
