"""The programming model: signatures, predictors, prompt format and parsing, tracing, saved state.

Example::

    from aprompt.program import Predict, use_lm

    class CountObjects:
        def __init__(self) -> None:
            self.count = Predict("question -> answer: int")

        async def __call__(self, question: str):
            return await self.count(question=question)

    async with use_lm(lm):
        prediction = await CountObjects()(question="A cat and two dogs: how many animals?")
"""

from aprompt.program.adapter import format_messages
from aprompt.program.context import current_lm, use_lm
from aprompt.program.discovery import named_predictors
from aprompt.program.fields import Field, InputField, OutputField
from aprompt.program.predictor import ChainOfThought, Predict
from aprompt.program.reply_reading import parse_reply
from aprompt.program.signature import Signature
from aprompt.program.state import load_state, load_state_file, program_state, save_state
from aprompt.program.trace import Trace, TraceEntry, trace
from aprompt.program.values import Demo, Prediction

__all__ = [
    "ChainOfThought",
    "Demo",
    "Field",
    "InputField",
    "OutputField",
    "Predict",
    "Prediction",
    "Signature",
    "Trace",
    "TraceEntry",
    "current_lm",
    "format_messages",
    "load_state",
    "load_state_file",
    "named_predictors",
    "parse_reply",
    "program_state",
    "save_state",
    "trace",
    "use_lm",
]
