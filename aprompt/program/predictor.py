"""Predictors: an LM call shaped by a signature, with the prompt state an optimizer changes."""

from __future__ import annotations

import copy
import itertools
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

from aprompt._errors import ConfigError, ParseError, StateError
from aprompt.lm._meter_context import metered_chat
from aprompt.lm._replies import accepting_cut_replies, cut_reply_acceptor, incomplete_reply
from aprompt.lm.types import LM, Message, TokenUsage
from aprompt.program.adapter import ReplyFormat, check_reply_format, correction_message, format_messages
from aprompt.program.context import ACTIVE_TRACES, current_lm
from aprompt.program.fields import Field
from aprompt.program.overrides import PromptOverride, active_overrides, current_run, note_call
from aprompt.program.reply_reading import answered_before_cut, describe_problems, read_reply
from aprompt.program.signature import Signature, as_signature
from aprompt.program.values import Demo, Prediction, as_demo, snapshot

__all__ = ["ChainOfThought", "Predict", "check_demo_fields"]

#: Tickets in the order calls are made: a trace lists a run's calls in that order, whichever answers first.
_CALL_ORDER = itertools.count()

REASONING = Field("reasoning", str, "step-by-step thinking that works out the answer", label="Reasoning")


class Predict:
    """An async callable that fills a signature's output fields with one LM call.

    Its prompt state — ``instruction``, ``demos`` and ``reply_format`` — is mutable and is what an
    optimizer changes;
    the signature is fixed. A call keeps nothing on ``self``: it snapshots the state when it starts,
    so one predictor serves many concurrent calls (and may be re-tuned between them).

    Args:
        signature: a :class:`Signature`, a string like ``"question -> answer: int"``, or a
            declaration class.
        instruction: the starting instruction; the signature's by default.
        demos: starting demos (``Demo`` objects or mappings of field values).
        reply_format: ``"fields"`` (``Label: value`` lines) or, for a signature with one output field,
            ``"bare"`` (the value alone; demos are shown the same way).
        lm: the LM to use when a call gives none; else the :func:`use_lm` default.
        max_parse_retries: corrective follow-ups after an unreadable reply before ``ParseError``
            (default 1: on the embedded model a second follow-up never turned an unreadable reply
            into a better score, and each costs a call; see ``bench/results/parse_retries.md``).
        **lm_params: sampling parameters for every call (``temperature=0.7``, ``max_tokens=256``).

    Example::

        answer = Predict("question -> answer: int", temperature=0.0)
        prediction = await answer(question="How many legs has a cat?", lm=lm)
        prediction.answer  # 4
    """

    def __init__(
        self,
        signature: Signature | str | type,
        *,
        instruction: str | None = None,
        demos: Iterable[Demo | Mapping[str, Any]] = (),
        reply_format: ReplyFormat = "fields",
        lm: LM | None = None,
        max_parse_retries: int = 1,
        **lm_params: Any,
    ) -> None:
        # Checked here: a wrong type or value (1.5, "1") would fail every call of the predictor instead.
        retries: object = max_parse_retries  # typed int, but the caller's value may be anything
        if not isinstance(retries, numbers.Integral) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"max_parse_retries must be a whole number >= 0, got {retries!r:.80}")
        shown: object = instruction
        if shown is not None and not isinstance(shown, str):
            raise ConfigError(
                f"instruction must be text or None (the signature's), got {type(shown).__name__} "
                f"{shown!r:.80}"
            )
        self._signature = self._prepare(as_signature(signature))
        self.instruction: str = instruction if instruction is not None else self._signature.instruction
        self.demos = demos
        self.reply_format = reply_format
        self.lm = lm
        self.max_parse_retries = int(retries)
        self.lm_params: dict[str, Any] = dict(lm_params)

    def _prepare(self, signature: Signature) -> Signature:
        """Hook for subclasses that derive their signature (ChainOfThought adds ``reasoning``)."""
        return signature

    @property
    def signature(self) -> Signature:
        """The fixed signature (its instruction is the original one; see ``self.instruction``)."""
        return self._signature

    @property
    def demos(self) -> list[Demo]:
        """The demos shown before each call (assign any iterable of Demos or mappings)."""
        return self._demos

    @demos.setter
    def demos(self, demos: Iterable[Demo | Mapping[str, Any]]) -> None:
        # One demo or one text would be read item by item (a mapping by its keys), each refused as no demo.
        if isinstance(demos, str | bytes | Mapping | Demo):
            raise ConfigError(
                f"demos must be a list of demos (aprompt.Demo or mappings of field values), got "
                f"{type(demos).__name__} {demos!r:.80}; wrap a single demo in a list"
            )
        self._demos = [as_demo(d) for d in demos]

    @property
    def reply_format(self) -> ReplyFormat:
        """``"fields"`` or ``"bare"``; setting ``"bare"`` on a signature with several output fields
        raises :class:`ConfigError`."""
        return self._reply_format

    @reply_format.setter
    def reply_format(self, reply_format: ReplyFormat) -> None:
        self._reply_format = check_reply_format(self._signature, reply_format, repr(self))

    # -- calling ---------------------------------------------------------------------------------
    async def __call__(
        self,
        *,
        lm: LM | None = None,
        rollout: int | None = None,
        lm_params: Mapping[str, Any] | None = None,
        **inputs: Any,
    ) -> Prediction:
        """Predict the output fields for ``inputs`` (keyword arguments named after input fields).

        ``rollout`` (default 0) is passed to ``lm.chat``: part of a cache key, a different rollout
        draws a different, still cacheable, sample. ``lm_params`` override this predictor's
        sampling parameters. Inside :func:`~aprompt.program.overrides.override_prompts`, the
        block's instruction and demos for this predictor replace its own, and the block's rollout
        and sampling parameters apply unless the call gives its own.

        Raises :class:`ConfigError` for wrong inputs or no LM, and :class:`ParseError` when the
        reply stays unreadable after ``max_parse_retries`` corrective follow-ups.
        """
        order = next(_CALL_ORDER)
        client = self._resolve_lm(lm)
        self._check_inputs(inputs)
        signature = self._signature
        instruction, demos, reply_format, params, rollout = self._effective_settings(rollout, lm_params)
        messages = format_messages(
            signature, inputs, demos=demos, instruction=instruction, reply_format=reply_format
        )
        conversation: list[Message] = messages
        # A trace keeps the inputs as the prompt showed them: the program may change a list it passed
        # (a growing history) once the call is made, and the demo must show what this call was given.
        traced_inputs = snapshot(inputs) if ACTIVE_TRACES.get() else inputs
        usage = TokenUsage()
        caller_accepts = cut_reply_acceptor()  # a caller that can use a cut reply (the proposer) says so
        for _attempt in range(self.max_parse_retries + 1):
            # Retries keep the caller's rollout: their messages differ (the correction is appended),
            # so a cache never replays the bad reply, and a re-run replays the same retries.
            # A reply cut at its token budget is an answer only when it already holds every field.
            with accepting_cut_replies(
                lambda text: (
                    answered_before_cut(signature, text, reply_format)
                    or (caller_accepts is not None and caller_accepts(text))
                )
            ):
                # The run's own unit, not the innermost trace: the program may open traces of its own.
                completion = await metered_chat(
                    client, conversation, rollout=rollout, unit=current_run(), **params
                )
                # Any LM, not only aprompt's clients: an empty, filtered or cut reply is no answer (an
                # evaluation scores the prompt 0 for it; see executors.base.unscored_lm_error).
                not_an_answer = incomplete_reply(completion, endpoint="")
            if not_an_answer is not None:
                raise not_an_answer
            usage = TokenUsage(
                usage.prompt_tokens + completion.usage.prompt_tokens,
                usage.completion_tokens + completion.usage.completion_tokens,
            )
            reading = read_reply(signature, completion.text, reply_format)
            if reading.ok:
                prediction = Prediction(reading.values, completion=completion, usage=usage)
                for sink in ACTIVE_TRACES.get():
                    sink.record(self, traced_inputs, prediction, order)
                return prediction
            # Only the latest bad reply is kept: a growing transcript of failures would crowd a
            # small model's context and teach it the wrong format.
            conversation = [
                *messages,
                {"role": "assistant", "content": completion.text},
                {"role": "user", "content": correction_message(signature, reading.problems, reply_format)},
            ]
        raise ParseError(
            f"{self!r}: reply unreadable after {self.max_parse_retries + 1} attempt(s): "
            f"{describe_problems(reading.problems)}",
            raw_text=completion.text,
            missing=tuple(reading.problems),
        )

    def _effective_settings(
        self, rollout: int | None, lm_params: Mapping[str, Any] | None
    ) -> tuple[str, tuple[Demo, ...], ReplyFormat, dict[str, Any], int]:
        """Snapshot of (instruction, demos, reply format, sampling params, rollout) for one call: the
        call's arguments over the task's prompt overrides over this predictor's own state."""
        instruction, demos, reply_format = self.instruction, tuple(self._demos), self._reply_format
        params = dict(self.lm_params)
        overrides = active_overrides()
        note_call(self, overrides)  # a call the run's prompts cannot reach fails the evaluation
        if overrides is not None:
            prompt = overrides.prompts.get(id(self))
            if prompt is not None:
                instruction, demos = prompt.instruction, prompt.demos
                reply_format = prompt.reply_format or reply_format
            params.update(overrides.lm_params)
            rollout = overrides.rollout if rollout is None else rollout
        params.update(lm_params or {})
        return instruction, demos, reply_format, params, rollout or 0

    def _resolve_lm(self, lm: LM | None) -> LM:
        resolved = lm if lm is not None else self.lm if self.lm is not None else current_lm()
        if resolved is None:
            raise ConfigError(
                f"{self!r} has no LM: pass lm= to the call or to the predictor, "
                "or wrap the calls in `with aprompt.use_lm(lm):`"
            )
        return resolved

    def _check_inputs(self, inputs: Mapping[str, Any]) -> None:
        if inputs.keys() == self._signature.input_set:  # every call that is right: one C-level compare
            return
        expected = self._signature.input_names
        missing = [n for n in expected if n not in inputs]
        unknown = sorted(n for n in inputs if n not in expected)
        if missing or unknown:
            detail = "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    f"unexpected {unknown}" if unknown else "",
                )
                if part
            )
            raise ConfigError(f"{self!r} takes inputs {list(expected)}: {detail}")

    # -- prompt state ----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """This predictor's prompt state: ``{"signature", "instruction", "demos"}``, plus
        ``"reply_format"`` when it is not the default ``"fields"`` (so the state of a predictor that
        keeps the default reads as it did before reply formats existed)."""
        state = {
            "signature": str(self._signature),
            "instruction": self.instruction,
            "demos": [d.to_dict() for d in self._demos],
        }
        if self._reply_format != "fields":
            state["reply_format"] = self._reply_format
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore prompt state from :meth:`get_state` (a state without ``"reply_format"`` means
        ``"fields"``); :class:`StateError` if it does not fit."""
        check_state(self, state)
        self.instruction = state["instruction"]
        self.demos = state["demos"]
        self.reply_format = state.get("reply_format", "fields")

    def use_prompt(self, prompt: PromptOverride) -> None:
        """Make ``prompt`` (e.g. an optimizer's choice) this predictor's own: its instruction, demos and
        reply format (``None`` keeps the current one)."""
        self.instruction = prompt.instruction
        self.demos = prompt.demos
        if prompt.reply_format is not None:
            self.reply_format = prompt.reply_format

    def __deepcopy__(self, memo: dict[int, Any]) -> Predict:
        # Copies share the (immutable) signature and the LM client — never duplicate a connection
        # pool — but own their prompt state, so a copied program can be tuned independently.
        clone = copy.copy(self)
        clone._demos = copy.deepcopy(self._demos, memo)
        clone.lm_params = copy.deepcopy(self.lm_params, memo)
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._signature)!r})"


def check_state(predictor: Predict, state: Mapping[str, Any], where: str = "") -> None:
    """Raise :class:`StateError` unless ``state`` is a valid prompt state for ``predictor``."""
    where = where or repr(predictor)
    if not isinstance(state, Mapping):
        raise StateError(f"{where}: state must be an object, got {type(state).__name__}")
    # A setting this predictor never writes (a misspelt key, one a newer aprompt saves) would be dropped.
    unknown = sorted(set(state) - set(predictor.get_state()) - {"reply_format"}, key=str)
    if unknown:
        raise StateError(
            f"{where}: the state has {unknown}, which this predictor does not save or load (misspelt, or "
            "written by a newer aprompt?): fix or remove them, or upgrade aprompt"
        )
    if state.get("signature") != str(predictor.signature):
        raise StateError(
            f"{where}: saved signature {state.get('signature')!r} does not match "
            f"the predictor's {str(predictor.signature)!r}"
        )
    if not isinstance(state.get("instruction"), str):
        raise StateError(f"{where}: 'instruction' must be a string")
    demos = state.get("demos")
    if not isinstance(demos, list) or not all(
        isinstance(d, Mapping) and all(isinstance(k, str) for k in d) for d in demos
    ):
        raise StateError(f"{where}: 'demos' must be a list of objects with string keys")
    check_demo_fields(predictor.signature, demos, where)
    try:
        check_reply_format(predictor.signature, state.get("reply_format", "fields"), where)
    except ConfigError as exc:
        raise StateError(str(exc)) from None


def check_demo_fields(signature: Signature, demos: Iterable[Mapping[str, Any]], where: str) -> None:
    """Raise :class:`StateError` for a demo the prompt would not show as saved: one with a field the
    signature lacks (a field renamed since it was saved), or with none of its output fields."""
    for i, demo in enumerate(demos):
        unknown = [name for name in demo if name not in signature.input_names + signature.output_names]
        if unknown:
            raise StateError(
                f"{where}: demos[{i}] has the field {unknown[0]!r}, which the signature {str(signature)!r} "
                "lacks (renamed since the state was saved?): rename it in the state to the signature's, "
                "or optimize the program again"
            )
        if not any(name in demo for name in signature.output_names):
            raise StateError(
                f"{where}: demos[{i}] has none of the output fields {list(signature.output_names)}, so "
                "the prompt would not show it: give it the outputs, or remove it from the state"
            )


class ChainOfThought(Predict):
    """A :class:`Predict` that asks for a ``reasoning`` field before the signature's outputs.

    Example::

        solve = ChainOfThought("question -> answer: int")
        str(solve.signature)  # 'question -> reasoning, answer: int'
    """

    def _prepare(self, signature: Signature) -> Signature:
        if REASONING.name in signature.output_names or REASONING.name in signature.input_names:
            raise ConfigError(f"signature {signature} already has a 'reasoning' field")
        return signature.prepend_output(REASONING)
