"""Kinds of sentence and line a proposal loses: the proposer reading its input back, made-up labeled or
quoted examples, talk of the program's code, near copies of what was said to the proposer."""

from __future__ import annotations

import difflib
import re

from aprompt._optimize.proposal_reading import _QUOTED, reads_as_instruction

#: A sentence that tells what the proposer's current or previous instruction says, in prose ("The
#: current instruction is to remove the word 'the' from the sentence."): the proposer reading its input
#: back; or what its new one says ("The new instructions are to change ..."): the proposer talking about
#: its proposal, which the model is to read as the instruction itself.
_OF_THE_INSTRUCTION = re.compile(
    r"^\W*(?:the\s+|my\s+|this\s+|our\s+)?"
    r"(?:current|previous|original|old|given|new|proposed|revised|improved|updated|rewritten)\s+"
    r"instructions?\s+(?:is|are|was|were|says?|would\s+be|will\s+be)\b",
    re.IGNORECASE,
)


def speaks_of_the_instruction(sentence: str) -> bool:
    """Whether ``sentence`` tells what the proposer's current, previous or new instruction says.

    Example::

        >>> speaks_of_the_instruction("The current instruction is to remove the word 'the'.")
        True
        >>> speaks_of_the_instruction('The new instructions are to change "their" to "theirself".')
        True
        >>> speaks_of_the_instruction("Rewrite the sentence to negate its verb.")
        False
    """
    return bool(_OF_THE_INSTRUCTION.match(sentence))


#: The proposer's framing of its new instruction, "The new instruction is to ...": what follows "to" is
#: the instruction.
_NEW_INSTRUCTION_IS_TO = re.compile(
    r"^\W*(?:the\s+|my\s+|this\s+|our\s+)?(?:new|proposed|revised|improved|updated|rewritten)\s+"
    r"instructions?\s+(?:is|are|would\s+be|will\s+be)\s+to\s+(?P<rest>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)


def restated_new_instruction(sentence: str) -> str | None:
    """The instruction that ``sentence`` frames as the proposer's new one, said as an instruction; None
    when it frames none.

    Example::

        >>> restated_new_instruction("The new instruction is to rewrite the sentence with its verb negated.")
        'Rewrite the sentence with its verb negated.'
        >>> restated_new_instruction("Rewrite the sentence to negate its verb.") is None
        True
    """
    found = _NEW_INSTRUCTION_IS_TO.match(sentence.strip())
    if found is None:
        return None
    rest = found["rest"].strip()
    return rest[:1].upper() + rest[1:]


#: A template's placeholder ("{output_field}", "{current_instruction}"): the task's model sees it
#: unfilled, so a sentence holding one says nothing it can follow.
_PLACEHOLDER = re.compile(r"\{[^\W\d][\w]*\}")


def holds_a_placeholder(sentence: str) -> bool:
    """Whether ``sentence`` holds a template's placeholder, a name in braces.

    Example::

        >>> holds_a_placeholder("Reply with {output_field} only.")
        True
        >>> holds_a_placeholder('Reply with a JSON object such as {"answer": 3}.')
        False
    """
    return bool(_PLACEHOLDER.search(sentence))


#: A list item begun inside a line after a sentence's end, with a short label and a colon ("... asks
#: about. - Answer: 11"): set on a line of its own, where the rules for lines see it.
_INLINE_ITEM = re.compile(r"(?<=[.!?])[ \t]+[-*•][ \t]+(?=[^\W\d_][^:\n.!?]{0,40}:[ \t]*\S)")


def items_on_their_lines(text: str) -> str:
    """``text`` with each list item begun inside a line after a sentence's end moved to a line of its
    own.

    Example::

        >>> items_on_their_lines("Count the objects. - Answer: 11")
        'Count the objects.\\n- Answer: 11'
    """
    return _INLINE_ITEM.sub("\n- ", text)


#: Text, a colon, a space and more text on one line: "Reply: - The jewelers are ...", "The jeweler visits
#: the farm, negated: The jeweler does not visit the farm".
_LABELED = re.compile(r"[^\W\d_][^:\n]*:\s+\S")
#: A label of at most three words and one identifier with an underscore after it, alone on the line.
_LABELED_IDENTIFIER = re.compile(r"\s*(?:[^\W\d_]+\s+){0,2}[^\W\d_]+\s*:\s*[\w-]*_[\w-]*\W*$")


#: Labels an instruction heads its own rules with ("Note: the answer is case-sensitive.", "Output format:
#: a single integer."): what follows them is part of the instruction, never a made-up example.
_DIRECTIVE_LABEL = re.compile(
    r"^\W*(?:notes?|important|remember|hints?|warning|caution|keep in mind|bear in mind|constraints?|"
    r"rules?|requirements?|guidelines?|(?:output |answer |reply |response )?format)\s*:",
    re.IGNORECASE,
)


def is_labeled_example(line: str) -> bool:
    """Whether ``line`` is labeled text that tells the model nothing to do (``Label: value``, ``input,
    negated: output``): a demo the proposer made up, whatever its label; ``Note: keep the tense.``
    instructs and stays, and so does a line under a label of the instruction's own rules (``Note``,
    ``Important``, ``Constraints``, ``Output format``, ...: :data:`_DIRECTIVE_LABEL`). A short label
    and one identifier is a data item, even when the identifier starts with a verb.

    Example::

        >>> is_labeled_example("The jeweler visits the farm, negated: The jeweler does not visit the farm")
        True
        >>> is_labeled_example("The intent: search_book_restaurant")
        True
        >>> is_labeled_example("Rewrite the sentence so that it says the opposite: negate its verb.")
        False
        >>> is_labeled_example("Note: the answer is case-sensitive.")
        False
    """
    if not _LABELED.search(line) or _DIRECTIVE_LABEL.match(line):
        return False
    # A label and one identifier ("The intent: search_book_restaurant"): a data item, though the
    # identifier may start with a verb.
    return bool(_LABELED_IDENTIFIER.match(line)) or not reads_as_instruction(line)


def quotes_an_example(sentence: str) -> bool:
    """Whether ``sentence`` tells the model nothing to do and is mostly a quoted sentence ("The original
    sentence is "The jeweler uses reading glasses."): an example the proposer made up.

    Example::

        >>> quotes_an_example('The negated sentence is "The jeweler does not use reading glasses."')
        True
        >>> quotes_an_example('The intents are "play music" and "set alarm".')
        False
    """
    # A quoted span of four words or more is a sentence, not a data label such as "play music".
    quoted = sum(len(m.group(0)) for m in _QUOTED.finditer(sentence) if len(m.group(0).split()) >= 4)
    # None, a short one, or the whole sentence quoted (an instruction given in quotes): no example.
    if not quoted or 2 * quoted < len(sentence.strip()) or not re.search(r"\w", _QUOTED.sub("", sentence)):
        return False
    return not reads_as_instruction(sentence)


#: Object-oriented code talk ("a new instance of negate, which is a subclass of the negate class"): the
#: proposer describing the program's code, which the task's model never sees.
_CLASS_TALK = re.compile(
    r"\b(?:sub-?class(?:es|ed)?|super-?class(?:es)?|instantiat\w*|new\s+instances?\s+of|"
    r"inherit(?:s|ed|ing)?\s+from|constructors?)\b|\bclass(?:es)?\s+(?:that|which)\b",
    re.IGNORECASE,
)


def speaks_of_classes(sentence: str) -> bool:
    """Whether ``sentence`` talks of classes, subclasses or instances of the program's code.

    Example::

        >>> speaks_of_classes("Create a new instance of negate, a subclass of the negate class.")
        True
        >>> speaks_of_classes("Count the instances of the letter r.")
        False
    """
    return bool(_CLASS_TALK.search(sentence))


#: An identifier with an underscore inside (``snake_case``); markdown's ``_emphasis_`` has none inside.
_CODE_NAME = re.compile(r"(?<![\w.])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+(?![\w])")


def code_names(sentence: str) -> frozenset[str]:
    """The ``snake_case`` identifiers ``sentence`` names, lower-cased.

    Example::

        >>> sorted(code_names("Use define_intent_function, then return the _intent_."))
        ['define_intent_function']
    """
    return frozenset(name.lower() for name in _CODE_NAME.findall(sentence))


#: Words that make a ``snake_case`` name a piece of code rather than a label of the data ("play_music").
_CODE_TALK = re.compile(r"\b(?:functions?|methods?|func|def|call(?:s|ed|ing)?|api)\b|\w\(", re.IGNORECASE)


def names_code(sentence: str, known_names: frozenset[str]) -> bool:
    """Whether ``sentence`` talks of code the task does not have: it names a ``snake_case`` identifier
    outside ``known_names`` and calls something a function, a method or a call (in words, in the name, or
    with brackets). A data label in ``snake_case`` ("one of: play_music, get_weather") is no code.

    Example::

        >>> names_code("Define the intent using define_intent_function.", frozenset({"intent"}))
        True
        >>> names_code("Answer with one of: play_music, get_weather.", frozenset({"intent"}))
        False
    """
    unknown = code_names(sentence) - known_names
    if not unknown:
        return False
    # "define_intent_function": the word inside the name (an underscore joins it to the rest).
    named = any(_CODE_TALK.search(name.replace("_", " ")) for name in unknown)
    return named or bool(_CODE_TALK.search(sentence))


#: The fewest words a proposer sentence needs for a near copy of it to count as an echo, and the share
#: of its words, in order, that a reply's sentence must have (and of the reply sentence's own words).
ECHO_MIN_WORDS = 6
ECHO_SHARE = 0.85
ECHO_OWN_SHARE = 0.6


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def echoes(sentence: str, said: str) -> bool:
    """Whether ``sentence`` copies ``said`` (a sentence addressed to the proposer, of
    :data:`ECHO_MIN_WORDS` words or more) with a word or two changed: :data:`ECHO_SHARE` of its words in
    the same order, and little else (:data:`ECHO_OWN_SHARE` of the sentence's own words). A tip copied
    into a proposal ("Start the instruction with a persona relevant to the task (e.g. "You are a
    doctor").") tells the task's model nothing."""
    theirs, own = _words(said), _words(sentence)
    if len(theirs) < ECHO_MIN_WORDS or not own:
        return False
    blocks = difflib.SequenceMatcher(None, own, theirs, autojunk=False).get_matching_blocks()
    matched = sum(block.size for block in blocks)
    return matched >= ECHO_SHARE * len(theirs) and matched >= ECHO_OWN_SHARE * len(own)
