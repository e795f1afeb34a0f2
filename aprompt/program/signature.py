"""Signatures: the ordered input and output fields of a predictor, and its instruction."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterable
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.program.fields import Field, FieldSpec, default_label, normalize_choice, parse_type

__all__ = ["Signature", "as_signature"]


def default_instruction(inputs: Iterable[Field], outputs: Iterable[Field]) -> str:
    given = ", ".join(f"`{f.name}`" for f in inputs)
    wanted = ", ".join(f"`{f.name}`" for f in outputs)
    return (
        f"Given the fields {given}, produce the fields {wanted}."
        if given
        else f"Produce the fields {wanted}."
    )


def _field_tuple(fields: Iterable[Field]) -> tuple[Field, ...]:
    return tuple(fields)


@attrs.frozen
class Signature:
    """What a predictor reads and writes: ordered input fields, output fields and an instruction.

    A frozen value. Build one from a compact string, from a class, or directly from fields::

        Signature.parse("question, context -> answer")
        Signature.parse("question: str, n: int -> answer: float", "Answer in digits.")

        class QA(Signature):
            \"\"\"Answer the question with a number.\"\"\"
            question: str = InputField(desc="a question about counts")
            answer: int = OutputField(desc="the count")

        Predict(QA)  # or Signature.from_class(QA)

    An empty instruction is replaced by a generic one naming the fields, so the model is always told
    what to do. ``str(signature)`` is the canonical string (``"question, n: int -> answer"``), which
    saved prompt state uses to check that it is loaded into a matching predictor.
    """

    inputs: tuple[Field, ...] = attrs.field(converter=_field_tuple)
    outputs: tuple[Field, ...] = attrs.field(converter=_field_tuple)
    instruction: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.outputs:
            raise ConfigError(f"signature {self} has no output field")
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"signature {self} repeats field name(s) {duplicates}")
        labels = [normalize_choice(f.label) for f in self.fields]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"signature {self} has two fields with the same label")
        # A reply marks a field by its label or its name: one field's name must not be another's label.
        marked_by: dict[str, str] = {}
        for f in self.fields:
            for form in {normalize_choice(f.label), normalize_choice(f.name)}:
                other = marked_by.setdefault(form, f.name)
                if other != f.name:
                    raise ConfigError(
                        f"signature {self}: fields {other!r} and {f.name!r} would both be read from "
                        f"{form!r} in a reply (a field's name marks it as its label does); relabel one"
                    )
        if not self.instruction.strip():
            object.__setattr__(self, "instruction", default_instruction(self.inputs, self.outputs))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass is a declaration (``class QA(Signature)``): check it when the class is defined,
        # so a mistake surfaces at import time rather than at the first call.
        super().__init_subclass__(**kwargs)
        Signature.from_class(cls)

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, instruction: str | None = None) -> Signature:
        """Build a signature from ``"in1, in2: type -> out1, out2: type"``.

        Types are optional (``str`` by default) and may be ``int``, ``float``, ``bool``,
        ``list[str]``, ``Literal['a', 'b']``. Raises :class:`ConfigError` naming the problem.
        """
        if text.count("->") != 1:
            raise ConfigError(f"signature {text!r} needs exactly one '->' between inputs and outputs")
        left, right = text.split("->")
        return cls(
            inputs=_parse_side(left, text),
            outputs=_parse_side(right, text),
            instruction=instruction or "",
        )

    @classmethod
    def from_class(cls, declaration: type) -> Signature:
        """Build a signature from a class whose annotated attributes are ``InputField()`` /
        ``OutputField()`` and whose docstring is the instruction (fields in definition order, a base
        class's first; a subclass redeclaring a field replaces it in place)."""
        try:
            hints = typing.get_type_hints(declaration)
        except Exception:  # unresolvable forward references: fall back to our own type reader
            hints = {}
        declared: dict[str, Field] = {}
        roles: dict[str, str] = {}
        # The declaring classes, bases first; Signature itself (and object) declare no field.
        for klass in reversed([k for k in declaration.__mro__ if k not in Signature.__mro__]):
            own = inspect.get_annotations(klass)
            for name, value in vars(klass).items():
                if isinstance(value, FieldSpec) and name not in own:
                    raise ConfigError(
                        f"{klass.__name__}.{name} has no type annotation, so it would not be a field: "
                        f"write it as `{name}: str = {_declared_as(value)}(...)`"
                    )
            for name, raw in own.items():
                spec = klass.__dict__.get(name)
                if not isinstance(spec, FieldSpec):
                    raise ConfigError(
                        f"{klass.__name__}.{name} must be declared with InputField() or OutputField()"
                    )
                annotation = hints.get(name, raw)
                if isinstance(annotation, str):
                    annotation = parse_type(annotation)
                declared[name] = Field(name, annotation, spec.description, spec.label or default_label(name))
                roles[name] = spec.role
        inputs = [field for name, field in declared.items() if roles[name] == "input"]
        outputs = [field for name, field in declared.items() if roles[name] != "input"]
        doc = declaration.__dict__.get("__doc__")
        return Signature(inputs, outputs, inspect.cleandoc(doc) if doc else "")

    # -- views and derived signatures ----------------------------------------------------------
    # Read on every call: made once per signature (kept in a slot, not part of the value).
    @functools.cached_property
    def fields(self) -> tuple[Field, ...]:
        """Inputs then outputs."""
        return self.inputs + self.outputs

    @functools.cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple([f.name for f in self.inputs])

    @functools.cached_property
    def input_set(self) -> frozenset[str]:
        """The input field names as a set (a call's inputs are checked against it)."""
        return frozenset(self.input_names)

    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple([f.name for f in self.outputs])

    def field(self, name: str) -> Field:
        """The field called ``name``; ``KeyError`` if there is none."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def with_instruction(self, instruction: str) -> Signature:
        """The same fields with another instruction."""
        return attrs.evolve(self, instruction=instruction)

    def prepend_output(self, field: Field) -> Signature:
        """The same signature with ``field`` as its first output (how ChainOfThought adds
        reasoning).

        The instruction is kept when it was given, and regenerated when it was the generic one.
        """
        generic = self.instruction == default_instruction(self.inputs, self.outputs)
        return Signature(self.inputs, (field, *self.outputs), "" if generic else self.instruction)

    def __str__(self) -> str:
        inputs = ", ".join(f.spec() for f in self.inputs)
        outputs = ", ".join(f.spec() for f in self.outputs)
        return f"{inputs} -> {outputs}"


def _declared_as(spec: FieldSpec) -> str:
    return "InputField" if spec.role == "input" else "OutputField"


def as_signature(spec: Signature | str | type) -> Signature:
    """Accept a Signature, a signature string, or a declaration class."""
    if isinstance(spec, Signature):
        return spec
    if isinstance(spec, str):
        return Signature.parse(spec)
    if isinstance(spec, type):
        return Signature.from_class(spec)
    raise ConfigError(f"expected a Signature, a signature string or a class, got {spec!r}")


def _parse_side(side: str, text: str) -> list[Field]:
    if not side.strip():
        return []
    fields = []
    for part in _split_top_level(side):
        name, colon, type_text = part.partition(":")
        name = name.strip()
        if not name:
            raise ConfigError(f"signature {text!r} has an empty field name")
        fields.append(Field(name, parse_type(type_text) if colon else str))
    return fields


def _split_top_level(side: str) -> list[str]:
    """Split on commas outside brackets and quotes (``Literal['a, b', 'c']`` is one part)."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for ch in side:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts
