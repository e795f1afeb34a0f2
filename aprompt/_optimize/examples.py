"""Training and validation examples: program inputs plus the labels a metric reads."""

from __future__ import annotations

import copy
import decimal
import hashlib
import json
import math
import numbers
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from aprompt._errors import ConfigError
from aprompt.run.identity import stable_form


def _as_dict(value: Mapping[str, Any], part: str) -> dict[str, Any]:
    """``value`` as a dict of field values, or a :class:`ConfigError` saying to name the fields: a bare
    value (``labels=answer``) would fail in ``dict()`` with a bare ``ValueError`` or ``TypeError``."""
    if not isinstance(value, str | bytes):
        try:
            return dict(value)
        except (TypeError, ValueError):
            pass
    raise ConfigError(
        f"an example's {part} must be a mapping of field names to values ({part}={{'answer': ...}}), got "
        f"{type(value).__name__} {value!r:.80}"
    )


def _as_inputs(value: Mapping[str, Any]) -> dict[str, Any]:
    return _as_dict(value, "inputs")


def _as_labels(value: Mapping[str, Any]) -> dict[str, Any]:
    return _as_dict(value, "labels")


def _same_in_every_process(value: Any) -> Any:
    """A JSON stand-in for a value JSON lacks: a set as its sorted items (a set's order follows the
    process's hash seed), anything else by its content (:func:`~aprompt.run.identity.stable_form`: an
    array's text shows only some of it, an object without a text of its own only its class)."""
    if isinstance(value, set | frozenset):
        return sorted(json.dumps(item, sort_keys=True, default=_same_in_every_process) for item in value)
    return stable_form(value)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: Any, where: str) -> None:
    """Raise :class:`ConfigError` where ``value`` holds a lone UTF-16 surrogate (text decoded with
    ``surrogateescape``, or a JSON ``\\udc00`` escape): no LM request, cache key or journal can carry it,
    and a request failing on it mid-run would be scored as the prompt's failure."""
    if isinstance(value, str):
        if (found := _LONE_SURROGATE.search(value)) is not None:
            raise ConfigError(
                f"{where} holds a lone surrogate {found.group()!r} at character {found.start()}, which is "
                "not Unicode text: read the data with errors='replace' (or fix its encoding)"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]")


#: The dict keys JSON holds (as text).
_JSON_KEYS = (str, int, float, bool, type(None))


def _check_keys(value: Any, where: str) -> None:
    """Raise :class:`ConfigError` where ``value`` holds a dict whose keys JSON cannot hold (a tuple) or
    sort (an int beside text): an example's id, its comparison with the other examples and its demos
    are made from its sorted JSON, and the run would stop on a bare ``TypeError``."""
    if isinstance(value, dict):
        odd = [key for key in value if not isinstance(key, _JSON_KEYS)]
        if not odd and len({type(key) for key in value}) > 1:
            try:
                sorted(value)
            except TypeError:
                odd = [key for key in value if not isinstance(key, str)]
        if odd:
            raise ConfigError(
                f"{where} holds a dict with the key {odd[0]!r} ({type(odd[0]).__name__}), which JSON "
                "cannot hold or sort beside its other keys; give an example's dicts text keys (str(key))"
            )
        for key, item in value.items():
            _check_keys(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_keys(item, f"{where}[{index}]")


def _content_id(inputs: Mapping[str, Any], labels: Mapping[str, Any]) -> str:
    """A hash of the content, the same in every process (a resumed run finds its examples again)."""
    blob = json.dumps([inputs, labels], sort_keys=True, default=_same_in_every_process, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_id(value: object) -> str:
    """An example's id as text: a whole number (a dataset's row index) becomes its digits, ``None``
    no id (the content's hash). Ids are compared, sorted and journaled as text everywhere."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Integral, not int: a row index read from an array or a data frame is a numpy integer.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    raise ConfigError(
        f"an example's id must be text or a whole number, got {type(value).__name__} {value!r:.80}"
    )


@attrs.frozen
class Example:
    """One example. ``inputs`` are passed to the program as keyword arguments; ``labels`` are for the
    metric (and for labeled demos). ``id`` is stable: given (text, or a whole number as its digits), or
    a hash of the content.

    Fields read as attributes too: ``example.question``, ``example.answer``.

    Example::

        Example.from_dict({"question": "2+2?", "answer": "4"}, inputs=["question"])
    """

    inputs: Mapping[str, Any] = attrs.field(converter=_as_inputs)
    labels: Mapping[str, Any] = attrs.field(converter=_as_labels, factory=dict)
    id: str = attrs.field(default="", converter=_as_id)

    def __attrs_post_init__(self) -> None:
        _check_text(self.id, "an example's id")
        named = f"example {self.id!r}" if self.id else "an example"
        _check_text(self.inputs, f"{named}'s inputs")
        _check_text(self.labels, f"{named}'s labels")
        if not self.id:
            check_keys(self)
            object.__setattr__(self, "id", _content_id(self.inputs, self.labels))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], inputs: Sequence[str], id: str = "") -> Example:
        """Split ``data`` into inputs (the keys named in ``inputs``) and labels (the rest)."""
        if isinstance(inputs, str | bytes):  # one name, which would be read letter by letter
            raise ConfigError(
                f"inputs must be a list of field names, e.g. [{inputs!r:.80}], got {inputs!r:.80}"
            )
        missing = [key for key in inputs if key not in data]
        if missing:
            raise ConfigError(f"example lacks input field(s) {missing}: {dict(data)!r:.200}")
        return cls(
            inputs={k: data[k] for k in inputs},
            labels={k: v for k, v in data.items() if k not in inputs},
            id=id,
        )

    def __getattr__(self, name: str) -> Any:
        for part in ("inputs", "labels"):
            values = object.__getattribute__(self, part)
            if name in values:
                return values[name]
        raise AttributeError(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self.inputs.get(name, self.labels.get(name, default))

    def fields(self) -> dict[str, Any]:
        """Inputs and labels in one mapping."""
        return {**self.inputs, **self.labels}


def check_keys(example: Example) -> None:
    """Raise :class:`ConfigError` where the example's inputs or labels hold a dict whose keys JSON cannot
    hold or sort (see :func:`_check_keys`)."""
    named = f"example {example.id!r}" if example.id else "an example"
    _check_keys(dict(example.inputs), f"{named}'s inputs")
    _check_keys(dict(example.labels), f"{named}'s labels")


def metric_copy(example: Example) -> Example:
    """A copy of ``example`` for one metric call: a metric that changes what it is handed (pops a label,
    normalizes a list in place) must not change the example for the run's later scores and demos. Its
    mappings and the lists, dicts and sets in them are the call's own; other values are shared, as
    :func:`run_inputs` shares them with the program."""
    copied = object.__new__(Example)
    # Made field by field, not through ``Example(...)``: the example was checked when it was made, and
    # this runs once per scored example (a deep copy was ~70 µs of a ~1 ms LM call).
    object.__setattr__(copied, "inputs", _own_mapping(example.inputs))
    object.__setattr__(copied, "labels", _own_mapping(example.labels))
    object.__setattr__(copied, "id", example.id)
    return copied


def as_examples(
    items: Iterable[Example | Mapping[str, Any]],
    inputs: Sequence[str] | None = None,
    *,
    role: str = "trainset",
) -> list[Example]:
    """Normalise a dataset to :class:`Example` objects with unique ids.

    Plain mappings need ``inputs`` (the program's input field names). Duplicate ids get a ``#n`` suffix so
    every example stays addressable.

    Raises:
        ConfigError: an item is neither an example nor a mapping, a mapping lacks an input, or an
            example holds a dict whose keys JSON cannot hold or sort (:func:`check_keys`).
    """
    out: list[Example] = []
    taken: set[str] = set()
    # The last suffix given per id: its suffixes up to it are taken for good, so the next is searched
    # from there (counting from 1 each time took minutes for 20,000 examples sharing one id).
    last_suffix: dict[str, int] = {}
    for position, item in enumerate(items):
        if isinstance(item, Example):
            example = item
        elif isinstance(item, Mapping):
            if inputs is None:
                raise ConfigError(
                    f"{role}[{position}] is a mapping; pass input_fields=[...] to say which keys are "
                    "program inputs, or give Example objects"
                )
            example = Example.from_dict(item, inputs)
        else:
            raise ConfigError(_not_an_example(item, f"{role}[{position}]"))
        check_keys(example)
        unique, count = example.id, last_suffix.get(example.id, 0)
        while unique in taken:  # a later example may already hold the name an earlier one would get
            count += 1
            unique = f"{example.id}#{count}"
        if count:
            last_suffix[example.id] = count
        taken.add(unique)
        if unique != example.id:
            example = attrs.evolve(example, id=unique)
        out.append(example)
    return out


def _not_an_example(item: object, where: str) -> str:
    """Why ``item`` is no example, and what to give instead: a data frame's rows come as ``(index, row)``
    pairs from ``iterrows()`` and as row objects (a ``pandas.Series``), which are not mappings."""
    if isinstance(item, tuple) and len(item) == 2 and callable(getattr(item[1], "to_dict", None)):
        remedy = (
            "it looks like an (index, row) pair of df.iterrows(): pass df.to_dict('records') with "
            "input_fields=[...]"
        )
    elif callable(getattr(item, "to_dict", None)):
        remedy = "pass row.to_dict() (a data frame's rows: df.to_dict('records')) with input_fields=[...]"
    else:
        remedy = (
            "give aprompt.Example(inputs={...}, labels={...}) objects, or mappings of field values with "
            "input_fields=[...]"
        )
    return f"{where} is {type(item).__name__} {item!r:.80}, not an Example or mapping; {remedy}"


def apart_from(train: Sequence[Example], val: Sequence[Example]) -> list[Example]:
    """``train`` with each id a validation example also has renamed ``<id>#train`` (``#train2``, ... if
    taken): ids given by row index in each split (0, 1, ...) would otherwise name two examples, and a
    record of one (its output, its exclusion from the fresh examples a confirmation runs) would stand for
    the other."""
    val_ids = {e.id for e in val}
    taken = val_ids | {e.id for e in train}
    out = []
    for example in train:
        if example.id in val_ids:
            unique, count = f"{example.id}#train", 1
            while unique in taken:
                count += 1
                unique = f"{example.id}#train{count}"
            taken.add(unique)
            example = attrs.evolve(example, id=unique)
        out.append(example)
    return out


#: The classes of pandas' missing values (``pandas.NA``, ``pandas.NaT``), known by name: pandas is no
#: dependency, and a value of one exists only where the caller imported it.
_PANDAS_MISSING = frozenset({"NAType", "NaTType"})


def missing_label(value: object) -> bool:
    """Whether a label is a missing value, as a data frame's empty cell reads: ``None``, a NaN of any
    number type (``float``, numpy's, ``Decimal``, ``complex``), a "not a time" (``pandas.NaT``, numpy's
    ``NaT``) or ``pandas.NA``. No prediction matches it, and shown as a demo it would teach the model to
    answer "null"."""
    if value is None:
        return True
    kind = type(value)
    if kind is str or kind is int or kind is bool:  # the usual labels, told at once
        return False
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, decimal.Decimal):
        return value.is_nan()  # a signaling NaN raises on comparison
    if kind.__name__ in _PANDAS_MISSING and kind.__module__.partition(".")[0] == "pandas":
        return True  # pandas.NA compares as NA, never as True
    numpy = sys.modules.get("numpy")  # a numpy value exists only once numpy is imported
    if numpy is not None and isinstance(value, numpy.datetime64 | numpy.timedelta64):
        return bool(numpy.isnat(value))
    # Any other number (numpy's, complex) is missing when NaN, the one value unequal to itself.
    try:
        return isinstance(value, numbers.Number) and bool(value != value)
    except (TypeError, ValueError, ArithmeticError):  # a number type of odd comparisons: a value
        return False


def run_inputs(example: Example) -> dict[str, Any]:
    """The example's inputs for one program run: its lists, dicts and sets (nested ones too, in tuples
    as well; a ``defaultdict`` or ``OrderedDict`` of its own kind) as fresh copies, so that a program
    changing an input in place (``passages.append(...)``, ``.sort()``) leaves the example as it was for
    its next run; other values (text, numbers, a retriever object) are passed as they are."""
    return _own_mapping(example.inputs)


def _own_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as a new dict whose lists, dicts and sets are fresh copies (text and numbers, the usual
    values, copied as they are in one C call: this is on every program run's path)."""
    for value in values.values():
        if isinstance(value, _CONTAINERS):
            return {name: _fresh_containers(item) for name, item in values.items()}
    return dict(values)


#: The values a run gets its own copy of: a tuple for the lists it may hold.
_CONTAINERS = (list, dict, set, tuple)


def _fresh_containers(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_fresh_containers(item) for item in value]
    if kind is dict:
        return {key: _fresh_containers(item) for key, item in value.items()}
    if kind is set:
        return {_fresh_containers(item) for item in value}
    if kind is tuple:
        return tuple(_fresh_containers(item) for item in value)
    if isinstance(value, dict | list | set):  # a subclass (defaultdict, OrderedDict): its own kind
        try:
            copied = copy.copy(value)
            if isinstance(copied, dict):
                for key in copied:  # values replaced in place: the keys and their order stay
                    copied[key] = _fresh_containers(copied[key])
            elif isinstance(copied, list):
                copied[:] = [_fresh_containers(item) for item in copied]
        except Exception:  # a kind that cannot be copied (or refuses changes): shared, as other objects are
            return value
        return copied
    return value


def inputs_key(example: Example) -> str:
    """The example's inputs as canonical text (examples with equal inputs have equal keys)."""
    return json.dumps(example.inputs, sort_keys=True, default=_same_in_every_process, ensure_ascii=False)


def check_disjoint(train: Sequence[Example], val: Sequence[Example]) -> None:
    """Refuse validation examples whose inputs a training example has too: a demo bootstrapped from
    one would show the program the very answer it is scored on, and the search would favour it.

    Raises:
        ConfigError: naming the examples (at most five) and what to do.
    """
    in_train = {inputs_key(example): example.id for example in train}
    shared = [(in_train[key], example.id) for example in val if (key := inputs_key(example)) in in_train]
    if not shared:
        return
    shown = ", ".join(f"{t}/{v}" if t != v else t for t, v in shared[:5])
    more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
    raise ConfigError(
        f"{len(shared)} example(s) are in both the trainset and the valset, with the same inputs "
        f"({shown}{more}; trainset/valset id): a demo made from one would be scored on its own answer; "
        "remove them from one of the two"
    )
