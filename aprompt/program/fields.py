"""Fields of a signature: a name, a supported type, a description and the label shown to the model.

Supported types are the ones the parser can coerce a model's text into: ``str``, ``int``, ``float``,
``bool``, ``Literal[...]`` of str/int/bool choices, and ``list[T]`` of those. Anything else is
refused when the field is made, so a bad type is a :class:`~aprompt.ConfigError` before any LM call
is spent.
"""

from __future__ import annotations

import ast
import keyword
import re
import types
import typing
from typing import Any, Literal

import attrs

from aprompt._errors import ConfigError

__all__ = ["Field", "InputField", "OutputField"]

_SCALARS: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}

# Names that would collide with a Predict call's own keywords or a Prediction's attributes.
RESERVED_NAMES = frozenset(
    {
        "lm",
        "rollout",
        "lm_params",
        "completion",
        "usage",
        "get",
        "keys",
        "items",
        "values",
        "to_dict",
    }
)


_NON_WORD = re.compile(r"[^\w]+")


def normalize_choice(text: str) -> str:
    """Casefold, turn punctuation into spaces and collapse whitespace: how choices are compared."""
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Literal


def is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def normalize_type(annotation: Any) -> Any:
    """Return the canonical form of a supported type (``List[str]`` → ``list[str]``, ``list`` →
    ``list[str]``).

    Raises:
        ConfigError: for any type the parser cannot produce.
    """
    if annotation in (str, int, float, bool):
        return annotation
    if annotation is list:
        return types.GenericAlias(list, (str,))
    if is_literal(annotation):
        choices = typing.get_args(annotation)
        if not choices or not all(isinstance(c, str | int | bool) for c in choices):
            raise ConfigError(f"Literal choices must be str, int or bool values, not {annotation!r}")
        normalized = [normalize_choice(str(c)) for c in choices]
        if len(set(normalized)) != len(normalized):
            raise ConfigError(
                f"{annotation!r} has choices that differ only in case or punctuation; "
                "the parser could not tell them apart"
            )
        return annotation
    if is_list(annotation):
        args = typing.get_args(annotation) or (str,)
        if len(args) != 1:
            raise ConfigError(f"a list type takes one item type, not {len(args)}: {annotation!r}")
        (item,) = args
        if is_list(item) or item is list:
            raise ConfigError(f"nested lists are not supported: {annotation!r}")
        return types.GenericAlias(list, (normalize_type(item),))
    raise ConfigError(
        f"unsupported field type {annotation!r}: use str, int, float, bool, Literal[...] or list[...]"
    )


def type_to_str(annotation: Any) -> str:
    """The type as written in a signature string: ``int``, ``list[str]``, ``Literal['a', 'b']``."""
    if is_literal(annotation):
        return "Literal[" + ", ".join(repr(c) for c in typing.get_args(annotation)) + "]"
    if is_list(annotation):
        return f"list[{type_to_str(typing.get_args(annotation)[0])}]"
    return str(annotation.__name__)


def parse_type(text: str) -> Any:
    """Read a type expression from a signature string, without ``eval``: only supported types parse.

    Example::

        parse_type("Literal['yes', 'no']")  # -> Literal['yes', 'no']
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"cannot read the type {text!r}") from None
    return normalize_type(_type_from_node(node, text))


def _type_from_node(node: ast.expr, text: str) -> Any:
    name = _dotted_name(node)
    if name is not None and name in _SCALARS:
        return _SCALARS[name]
    if name in ("list", "List", "typing.List"):
        return list
    if isinstance(node, ast.Subscript):
        base = _dotted_name(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in ("Literal", "typing.Literal"):
            values = []
            for arg in args:
                # A negative int is a minus applied to a constant (how ``Literal[-2, 3]`` is written back).
                negative = isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub)
                constant = arg.operand if negative and isinstance(arg, ast.UnaryOp) else arg
                kinds = (int,) if negative else (str, int, bool)
                if not isinstance(constant, ast.Constant) or type(constant.value) not in kinds:
                    raise ConfigError(f"Literal choices must be constants in {text!r}")
                values.append(-typing.cast(int, constant.value) if negative else constant.value)
            return typing.cast(Any, Literal)[tuple(values)]
        if base in ("list", "List", "typing.List") and len(args) == 1:
            return types.GenericAlias(list, (_type_from_node(args[0], text),))
    raise ConfigError(
        f"unsupported field type {text!r}: use str, int, float, bool, Literal[...] or list[...]"
    )


def _dotted_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def default_label(name: str) -> str:
    """``question`` → ``Question``, ``context_docs`` → ``Context Docs``."""
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_") if part)


def _default_label(field: Field) -> str:
    return default_label(field.name)


@attrs.frozen
class Field:
    """One input or output field of a signature.

    Attributes:
        name: a Python identifier, used as keyword argument and attribute.
        annotation: the value's type (see the module docstring for what is supported).
        description: a short description shown to the model; may be empty.
        label: the marker the model reads and writes (``Label: value``); derived from the name.

    Example::

        Field("answer", int, "the number of objects")  # label "Answer"
    """

    name: str
    annotation: Any = attrs.field(default=str, converter=normalize_type)
    description: str = ""
    label: str = attrs.field(default=attrs.Factory(_default_label, takes_self=True))

    def __attrs_post_init__(self) -> None:
        if not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise ConfigError(f"field name {self.name!r} is not a valid Python identifier")
        if self.name.startswith("_"):
            raise ConfigError(f"field name {self.name!r} may not start with an underscore")
        if self.name in RESERVED_NAMES:
            raise ConfigError(f"field name {self.name!r} is reserved; choose another name")
        if not self.label.strip() or any(ch in self.label for ch in ":\r\n"):
            raise ConfigError(f"label {self.label!r} of field {self.name!r} must be one line without ':'")

    def spec(self) -> str:
        """``name`` for str fields, ``name: type`` otherwise."""
        return self.name if self.annotation is str else f"{self.name}: {type_to_str(self.annotation)}"


@attrs.frozen
class FieldSpec:
    """What :func:`InputField` / :func:`OutputField` leave on a signature class, read by
    ``from_class``."""

    role: Literal["input", "output"]
    description: str
    label: str | None


def InputField(desc: str = "", *, label: str | None = None) -> Any:
    """Declare an input field on a :class:`~aprompt.program.Signature` class.

    Typed ``Any`` so that ``question: str = InputField(desc="...")`` type-checks.
    """
    return FieldSpec("input", desc, label)


def OutputField(desc: str = "", *, label: str | None = None) -> Any:
    """Declare an output field on a :class:`~aprompt.program.Signature` class."""
    return FieldSpec("output", desc, label)
