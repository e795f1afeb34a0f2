"""Candidates worth searching: clean or drop proposals before the search spends trials on them.

Deterministic checks, none of which asks an LM:

- **Echoed scaffolding.** A small proposer often repeats its own prompt (``Current Instruction: …
  Dataset Summary: … Previous Instructions: - …``). :func:`clean_proposal` removes every section that
  starts with one of the proposer's labels (:data:`SCAFFOLDING_LABELS`: a label line, the rest of its
  line, and the bullet lines under it), the sentences of the proposer's own instruction and tips, and
  keeps what follows an answer label (``Proposed Instruction:``). A sentence that copies a tip or the
  proposer's instruction with a word or two changed (:func:`echoes`) is removed too. What remains is
  the instruction; when nothing usable remains, the proposal is dropped.
- **Code.** A block fenced as prose (```text, ```markdown) is the instruction: its fences are removed,
  its text kept (:func:`unfenced_prose`). A fenced code block (to its closing fence, or to the end of a
  reply cut inside it) and lines that read as code (``def``/``class``/``import``/``return`` lines,
  assignments such as ``x = y.strip()``) are never an instruction; they are removed, with a line ending
  in a colon that introduced them ("Here is the code with the example sentences:").
- **Made-up examples and headings.** A line labeled as an example (``Example:``, ``- Example of a
  negation: ...``; a label alone on its line takes the lines under it, to a blank line or a heading) and
  a section under a heading that names an example (``# Example``) are the proposer's own examples, which
  a small proposer gets wrong ("The negation of "The doctor has need of assistance" is "The chef has
  need of assistance.""); the program's demos are where examples go. Other markdown heading lines
  (``# Help``) are removed, the text under them kept. So is any line of labeled text that tells the model
  nothing to do (:func:`is_labeled_example`: "Reply: - The jewelers are ...", "The jeweler visits the
  farm, negated: The jeweler does not visit the farm"; "Note: keep the tense." instructs and stays, and
  so does a line under a label an instruction heads its rules with: "Output format: a single integer."), and
  a sentence that frames a quoted sentence of its own and tells nothing to do (:func:`quotes_an_example`:
  'The original sentence is "The jeweler uses reading glasses."'; a quoted data label is kept).
- **A preamble.** A first line that ends with a colon and tells the model nothing to do ("A more
  detailed and polished version of the program could be:", "Sure, here is the new instruction:") is
  the proposer introducing its answer; it is removed when text follows it. So is such a line further
  down in which the proposer speaks as itself ("Here is a very short way to explain it:").
- **Trailing remarks.** Three or more sentences in a row that end a proposal after its last sentence that
  instructs, none of which does (:func:`reads_as_instruction`), are made-up examples or rambling ("...
  verb of the sentence. The jeweler does not love chocolate. The woman loves chocolate. ..."); they are
  cut. One or two are kept, as context an instruction may end with.
- **Repeats.** A sentence the proposal already said (a small proposer often writes its instruction
  twice) is removed.
- **Lines without a letter** (a bullet, a list's numbers, a date) tell the model nothing; they are removed.
- **Another task's words.** A sentence that names the topic of the worked example the proposer is shown
  (``"... translated into a French sentence."``), when the task itself does not, is the example leaking
  into the proposal; it is removed.
- **The proposer's input read back.** A sentence that tells what the current or previous instruction
  says ("The current instruction is to remove the word 'the' from the sentence.") is removed.
- **Code the task does not have.** A sentence that tells the model to use a function, method or call
  named in ``snake_case`` that is not one of the program's fields ("Use the function
  classify_to_list_of_intent to return the intent list.") is removed (:func:`names_code`); a data label
  in ``snake_case`` ("one of: play_music, get_weather") is kept. So is a sentence that talks of classes,
  subclasses or new instances (:func:`speaks_of_classes`: "create a new instance of negate, which is a
  subclass of the negate class"): the program's code, which the task's model never sees.
- **Echoed field labels.** Lines that start with a label of the program's own fields (``Question:``,
  ``Answer:``) are a demo the proposer made up, not an instruction; they are removed the same way.
- **No instruction in it.** A proposal none of whose sentences tells the model what to do
  (:func:`reads_as_instruction`: no clause that starts like an imperative, no "you"/"your", no "should",
  "must", "is to") is a remark about the task, an example or the proposer's own work ("The code to take a
  sentence as input ... would be:"); it is dropped, and the proposer is asked again. The test errs on
  keeping: any clause that does not start with an article, pronoun, preposition, conjunction, auxiliary,
  question word or ``-ing``/``-ed`` word counts as an imperative, so another language's instruction passes.
  One kind of sentence never counts: one *about the prompt's machinery* (:func:`about_the_prompt`), whose
  subject is the module, the program, the instruction, a field or the prompt ("The purpose of the
  output field is to ...", "The role of each module is to:", "The goal of this instruction is to ..."):
  the embedded model's proposer writes these from the program description, and their "is to" reads as an
  instruction though they tell the model nothing about the task. One that says "you" still counts, and
  so does one with "should" or "must" about a module, a program or a field. Text in double quotes is
  content, never a clause that instructs ("... a key named "Intent,Intent"").
- **Off-task or far worse, on a screen.** Each surviving proposal and the original instruction are scored,
  without demos, on the same few validation examples (``Budget.screen_size``). A proposal is dropped when
  its mean is at least :data:`FAR_BELOW` under the original's, or when it is *off-task* — it shares no
  content word (:func:`content_words`: lower-cased, plural and ``-ing``/``-ed`` endings cut, common words
  and prompt jargon left out) with the task's field names, labels and descriptions, the original
  instruction, the data summary or the program description — **and** it scores below the original on the
  screen. A word-overlap test alone would drop a good paraphrase; the screen alone, on so few examples,
  is noise; together they drop proposals that are both unrelated and not better. Screens on fewer than
  :data:`MIN_SCREENED` shared examples decide nothing.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from aprompt._optimize.quotes import unquoted
from aprompt.program.predictor import Predict

#: Labels of the proposer's prompt (propose.py) and of the grounding prompts (summaries.py); a proposal
#: line starting with one of them is an echo of the scaffolding, never part of an instruction.
SCAFFOLDING_LABELS: tuple[str, ...] = (
    "Module",
    "Modules",
    "Program",
    "Current Instruction",
    "Current Instructions",
    "Dataset Summary",
    "Data Summary",
    "Program Description",
    "Program Code",
    "Examples Of Good Calls",
    "Example Of Good Calls",
    "Examples Of Good Call",
    "Example Of Good Call",
    "Previous Instructions",
    "Previous Instruction",
    "Tip",
    "Tips",
    # The answer field's label in the plural: the proposer listing several instructions, an echo.
    "Proposed Instructions",
    "New Instructions",
    "Improved Instructions",
    "Observations",
    "Input Fields",
    "Output Fields",
)
#: Labels after which a proposer writes the instruction itself: what follows is kept.
ANSWER_LABELS: tuple[str, ...] = (
    "Proposed Instruction",
    "New Instruction",
    "Improved Instruction",
    "Instruction",
)
#: Fewest characters (letters included) an instruction must keep after cleaning, counted as
#: :func:`text_length` counts them.
MIN_USABLE_CHARS = 12
#: What one wide (Chinese, Japanese, Korean) character counts for in :func:`text_length`: about the
#: letters of Latin script that say as much ("请用一个词回答问题。" is "Answer in one word.").
WIDE_CHAR_WEIGHT = 3
#: A proposal whose screen mean is this far under the original's is dropped.
FAR_BELOW = 0.4
#: Fewest examples scored for both the original and a proposal before the screen decides anything.
MIN_SCREENED = 3
#: English words that do not start an imperative clause (articles, pronouns other than "you", prepositions,
#: conjunctions, auxiliaries, question words, quantifiers, a reply's "sure" or "okay"): a clause starting
#: with one tells the model nothing to do unless it says "you", "should", "must", ... (:data:`_OBLIGATION`).
_NOT_IMPERATIVE = frozenset(
    """a an the this that these those it its i we he she they me us him her them our my his their there
    here in on at for with by from of to into onto as about after before during while since because if
    when whenever although though unless whereas upon within without between among through under over
    than and but or so yet nor is are was were am been has had can could will would shall may might does
    did what which who whom whose why how where each every some any all no none many most such one both
    either neither another other following previous original current above below here's it's that's
    there's let's sure okay ok certainly absolutely yes""".split()
)
_FIRST_PERSON = re.compile(
    r"[^\w]*(?:i|i'm|i'll|i've|i'd|we|we're|we'll|let me|here is|here's)\b", re.IGNORECASE
)
_OBLIGATION = re.compile(
    r"\b(?:you|your|yours|yourself|you're|you'll|should|must|need to|needs to|has to|have to|is to|are to)\b",
    re.IGNORECASE,
)

_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")
#: A sentence whose subject is the prompt's machinery (see :func:`about_the_prompt`): a determiner, at
#: most five more words, then one of these nouns, before any verb of the sentence is reached.
_ABOUT_THE_PROMPT = re.compile(
    r"^[\W\d_]*(?:[^\W\d_]\s*:\s*)?(?:the|this|that|these|those|each|every|our|its|a|an)\s+"
    r"(?:[\w'-]+\s+){0,5}?"
    r"(?P<noun>modules?|programs?|instructions?|fields?|prompts?)\b(?!\s*[-'])",
    re.IGNORECASE,
)
#: Verbs that end a sentence's subject before a machinery noun could start it ("The answer is the code").
_SUBJECT_ENDS = re.compile(
    r"\b(?:is|are|was|were|be|has|have|had|does|do|did|can|could|will|would|should|must|may|might)\b",
    re.IGNORECASE,
)
#: What still makes a sentence about the prompt an instruction: it addresses the model, or (of a module,
#: program or field) states a rule.
_ADDRESSED = re.compile(r"\b(?:you|your|yours|yourself|you're|you'll)\b", re.IGNORECASE)
_RULE = re.compile(r"\b(?:should|must)\b", re.IGNORECASE)
#: Text in double quotes (to the closing quote, or the end when none closes it): what an instruction
#: quotes is content ("Reply "yes" or "no""), not a clause that tells the model what to do.
_QUOTED = re.compile(r"\"[^\"]*(?:\"|$)|“[^”]*(?:”|$)")
_COMMON = frozenset(
    """a about above after again all also an and any are as at be been before being below between both
    but by can could did do does doing done each either every few for from further had has have having
    he her here hers him his how i if in into is it its itself just may me might more most must my no
    nor not now of off on once only or other our out over own same she should so some such than that
    the their them then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours always never one two three first
    well make sure use using give given following based provide each way like get simple clear clearly
    concise concisely precise precisely carefully careful correct correctly accurate accurately
    example task instruction module prompt input output field reply respond response text language model
    program write new better good best""".split()
)


@attrs.frozen
class Cleaned:
    """A proposal after cleaning: the instruction, or ``None`` with the reason it is unusable.

    ``removed`` names what was cut (``"scaffolding: Current Instruction"``, ``"field label: Answer"``,
    ``"proposer sentence"``), empty when the proposal was clean.
    """

    text: str | None
    removed: tuple[str, ...] = ()
    reason: str = ""

    @property
    def note(self) -> str:
        """One line saying what was cut, for records; empty when nothing was."""
        return f"cleaned: removed {', '.join(self.removed)}" if self.removed else ""


def text_length(text: str) -> int:
    """How long ``text`` is as an instruction: its characters, a wide one counting
    :data:`WIDE_CHAR_WEIGHT` times, so that a short but whole instruction in Chinese or Japanese is held
    to the same minimum as its English translation."""
    wide = sum(1 for char in text if unicodedata.east_asian_width(char) in ("W", "F"))
    return len(text) + (WIDE_CHAR_WEIGHT - 1) * wide


def whole_sentences(text: str, max_chars: int) -> str:
    """``text`` cut after its last whole sentence that ends within ``max_chars`` (a proposer that rambles
    past its token budget often wrote a usable instruction first); unchanged when short enough or when no
    sentence ends in time."""
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text[: max_chars + 1])]
    return text[: ends[-1]].rstrip() if ends else text


def field_labels(predictor: Predict) -> tuple[str, ...]:
    """The labels the program's predictor shows the model (``Question``, ``Answer``, ...)."""
    return tuple(f.label for f in predictor.signature.fields)


def clean_proposal(
    text: str,
    labels: Sequence[str] = (),
    sentences: Sequence[str] = (),
    foreign_words: frozenset[str] = frozenset(),
    echoed: Sequence[str] = (),
    known_names: frozenset[str] | None = None,
) -> Cleaned:
    """Remove echoed scaffolding and field-label lines from a proposer's reply (see the module doc).

    Args:
        text: the proposer's reply (the parsed ``proposed_instruction``).
        labels: the program's field labels (:func:`field_labels`); lines starting with one are removed.
        sentences: the proposer's own sentences (its instruction, the tips), removed wherever they occur.
        foreign_words: content words (:func:`content_words`) of another task the proposer was shown (its
            worked example's topic) that this task does not use; a sentence with one is removed.
        echoed: sentences addressed to the proposer (its instruction, the tips); a sentence of the reply
            that copies one with a word or two changed (:func:`echoes`) is removed.
        known_names: the program's field names (lower-cased); when given, a sentence that talks of
            code (:func:`names_code`: "use the function classify_to_list_of_intent") naming any other
            identifier is removed: the task's model has no such function to call.
    """
    removed: list[str] = []
    kept = _without_code(unfenced_prose(text.strip()), removed)
    kept = _cut_sections(_without_examples(kept, removed), labels, removed)
    for sentence in (s for s in sentences if s):
        pattern = re.compile(re.escape(sentence), re.IGNORECASE)
        if pattern.search(kept):
            kept = pattern.sub(" ", kept)
            removed.append("proposer sentence")
    if foreign_words:
        kept = _without_sentences(
            kept,
            lambda sentence: bool(content_words(sentence) & foreign_words),
            "another task's words",
            removed,
        )
    if echoed:
        kept = _without_sentences(
            kept,
            lambda sentence: any(echoes(sentence, said) for said in echoed),
            "proposer sentence",
            removed,
        )
    kept = _without_sentences(kept, speaks_of_the_instruction, "proposer sentence", removed)
    kept = _without_lines(kept, is_labeled_example, "made-up examples", removed)
    kept = _without_sentences(kept, quotes_an_example, "made-up examples", removed)
    kept = _without_sentences(kept, speaks_of_classes, "names code", removed)
    if known_names is not None:
        kept = _without_sentences(
            kept, lambda sentence: names_code(sentence, known_names), "names code", removed
        )
    value = _without_trailing_remarks(
        _without_repeats(_tidy(_without_preamble(kept, removed)), removed), removed
    )
    removed = list(dict.fromkeys(removed))
    if text_length(value) >= MIN_USABLE_CHARS and not reads_as_instruction(value):
        return Cleaned(None, tuple(removed), f"reads as no instruction: {_excerpt(value)}")
    if text_length(value) < MIN_USABLE_CHARS or not re.search(r"[^\W\d_]", value):
        what = (
            "the proposer's scaffolding" if any(r.startswith(("scaff", "proposer")) for r in removed) else ""
        )
        what = what or ("the program's field labels" if any(r.startswith("field") for r in removed) else "")
        if what:
            reason = f"echoes {what} ({', '.join(removed)}); nothing usable is left"
        elif removed:
            reason = f"nothing usable is left after removing {', '.join(removed)}"
        else:
            reason = f"too short ({len(value)} chars)"
        return Cleaned(None, tuple(removed), reason)
    return Cleaned(value, tuple(removed))


#: A sentence that tells what the proposer's current or previous instruction says, in prose ("The
#: current instruction is to remove the word 'the' from the sentence."): the proposer reading its input back.
_OF_THE_INSTRUCTION = re.compile(
    r"^\W*(?:the\s+|my\s+|this\s+)?(?:current|previous|original|old|given)\s+instructions?\s+(?:is|are|was|were|says?)\b",
    re.IGNORECASE,
)


def speaks_of_the_instruction(sentence: str) -> bool:
    """Whether ``sentence`` tells what the proposer's current or previous instruction says.

    Example::

        >>> speaks_of_the_instruction("The current instruction is to remove the word 'the'.")
        True
        >>> speaks_of_the_instruction("Rewrite the sentence to negate its verb.")
        False
    """
    return bool(_OF_THE_INSTRUCTION.match(sentence))


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


def _without_lines(text: str, drop: Callable[[str], bool], why: str, removed: list[str]) -> str:
    """``text`` without the lines ``drop`` says to remove (``why`` recorded)."""
    lines = text.splitlines()
    kept = [line for line in lines if not drop(line)]
    if len(kept) < len(lines):
        removed.append(why)
    return "\n".join(kept)


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


def finished_part(text: str) -> str:
    """``text`` without its unfinished last sentence, for a reply cut at its token budget: the last line
    (the one being written when the budget ran out) is kept to its last sentence end, or dropped when it
    has none ("... and then add it to"); earlier lines ended with a line break, so they are whole. Text
    that already ends a sentence is unchanged; ``""`` when nothing whole is left."""
    stripped = text.rstrip()
    if re.search(r"[.!?][\"')\]`*_]*$", stripped):
        return stripped
    before, _, last = stripped.rpartition("\n")
    # A sentence end inside the line, not a list number's period ("3. Do").
    ends = [m.end() for m in re.finditer(r"(?<![\d\s])[.!?][\"')\]`*_]*(?=\s)", last)]
    return (before + "\n" + last[: ends[-1]] if ends else before).strip()


#: A line of code: a definition, an import, a return, an assignment to a name (``x = ...``, ``x.y +=
#: ...``, ``x[0] = ...``), a block's head (``try:``, ``except Exception as e:``, ``if x > 0:``), a call
#: alone on its line (``print(f"...")``, ``classify(``), or brackets alone; no instruction reads so.
_CODE_LINE = re.compile(
    r"^\s*(?:(?:def|class)\s+\w+\s*[(:]|(?:import|from)\s+[\w.]+(?:\s+import\b|\s*$)|return\b"
    r"|[A-Za-z_][\w.]*(?:\[[^\]\n]*\])?\s*[-+*/]?=(?!=)"
    r"|(?:try|else|finally|(?:except|if|elif|for|while|with|async\s+(?:def|for|with))\b[^\n]*?):\s*$"
    r"|[A-Za-z_][\w.]*\((?:[^()\n]*\)[;,]?)?\s*$"
    r"|[()\[\]{},;]+\s*$)"
)
_FENCE = re.compile(r"^\s*(?:```|~~~)")
#: A fence whose info string names prose (```text, ```markdown): the block holds the instruction itself.
_PROSE_FENCE = re.compile(
    r"^\s*(?:```|~~~)[ \t]*(?:text|txt|plain|plaintext|markdown|md|prompt|instructions?)[ \t]*$",
    re.IGNORECASE,
)


def unfenced_prose(text: str) -> str:
    """``text`` without the fence lines of a block tagged as prose (```text ... ```, to the end when
    none closes it): a proposer that fences its instruction so means the text, and the tag is no part of
    it. A block fenced without a tag, or tagged with a language, is left for :func:`clean_proposal` to
    remove as code.

    Example::

        >>> unfenced_prose("```text\nAnswer in one word.\n```")
        'Answer in one word.'
    """
    kept: list[str] = []
    in_prose = False
    for line in text.splitlines():
        if not in_prose and _PROSE_FENCE.match(line):
            in_prose = True
        elif in_prose and _FENCE.match(line):
            in_prose = False
        else:
            kept.append(line)
    return "\n".join(kept) if len(kept) < len(text.splitlines()) else text


#: What continues code on the next line: an indented line, a string or a statement alone on its line.
_CODE_GOES_ON = re.compile(
    r"^(?:\s+\S|\s*(?:\"[^\"\n]*\"|'[^'\n]*'),?\s*$|\s*(?:pass|break|continue)\s*$|\s*raise\b)"
)


def _without_code(text: str, removed: list[str]) -> str:
    """``text`` without fenced code blocks (an unclosed fence runs to the end), lines of code and what
    continues them, and a line ending in a colon right before removed code (it introduced the code)."""
    kept: list[str] = []
    in_fence = in_code = False
    lines = text.splitlines()
    for line in lines:
        fence = bool(_FENCE.match(line))
        if fence or in_fence or _CODE_LINE.match(line) or (in_code and _CODE_GOES_ON.match(line)):
            if not in_code:  # the code starts: drop the line that introduced it
                while kept and not kept[-1].strip():
                    kept.pop()
                if kept and _ends_with_colon(kept[-1]):
                    kept.pop()
            in_fence, in_code = in_fence != fence, True
            continue
        in_code = False
        kept.append(line)
    if len(kept) == len(lines):
        return text
    removed.append("code")
    return "\n".join(kept)


_HEADING = re.compile(r"^\s*#{1,6}\s+(?P<title>.*)$")
#: A line labeled as an example: maybe a bullet or emphasis, "Example" or "Examples", at most six more
#: words, a colon.
_EXAMPLE_LABEL = re.compile(
    r"^\s*(?:[-*+•]\s+|\d+[.)]\s+)?[*_]*(?:(?:the|an|for)\s+)?examples?\b(?P<rest>[^:\n]{0,60}?):[*_]*"
    r"(?P<value>.*)$",
    re.IGNORECASE,
)


def _without_examples(text: str, removed: list[str]) -> str:
    """``text`` without the proposer's made-up examples and without heading lines (see the module doc)."""
    kept: list[str] = []
    skipping = ""  # "heading": to the next heading; "label": to a blank line or a heading
    cut = False
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if skipping and (heading or (skipping == "label" and not line.strip())):
            skipping = ""
        if skipping:
            cut = True
            continue
        if heading:
            cut = True
            if heading.group("title").strip(" *_`").lower().startswith("example"):
                skipping = "heading"
            continue
        label = _EXAMPLE_LABEL.match(line)
        if label and len(label.group("rest").split()) <= 6:
            cut = True
            if not label.group("value").strip():
                skipping = "label"
            continue
        kept.append(line)
    if not cut:
        return text
    removed.append("made-up examples and headings")
    return "\n".join(kept)


def _ends_with_colon(line: str) -> bool:
    """Whether ``line`` ends with a colon, markdown emphasis aside: it introduces what follows."""
    return line.rstrip(" *_`").endswith(":")


#: Abbreviations a sentence goes on after ("... a persona (e.g. 'You are a ...').").
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "cf.")


def sentences_of(line: str) -> list[str]:
    """The sentences of one line (split after ``.``, ``!`` or ``?`` and a space, not after ``e.g.``
    and the like), empty ones left out."""
    sentences: list[str] = []
    for piece in re.split(r"(?<=[.!?])\s+", line.strip()):
        if sentences and sentences[-1].lower().endswith(_ABBREVIATIONS):
            sentences[-1] = f"{sentences[-1]} {piece}"
        elif piece:
            sentences.append(piece)
    return sentences


def _without_preamble(text: str, removed: list[str]) -> str:
    """``text`` without a first line that introduces the rest (ends with a colon, tells the model
    nothing to do), when something follows it."""
    first, newline, rest = text.strip().partition("\n")
    if newline and rest.strip() and _ends_with_colon(first) and not reads_as_instruction(first):
        removed.append("preamble")
        text = rest
    lines = text.splitlines()
    kept = [
        line
        for index, line in enumerate(lines)
        if not (
            index > 0
            and _ends_with_colon(line)
            and _FIRST_PERSON.match(line.strip(" *_`>-"))
            and any(later.strip() for later in lines[index + 1 :])
        )
    ]
    if len(kept) < len(lines):
        removed.append("preamble")
        return "\n".join(kept)
    return text


def reads_as_instruction(text: str) -> bool:
    """Whether some sentence of ``text`` tells the model what to do: it says "you", "your", "should",
    "must", "need to", "is to", ..., or one of its clauses (a sentence's start, or what follows a comma,
    colon or semicolon; a label such as ``Example:`` is none) starts with a word that may be an imperative
    verb (not in :data:`_NOT_IMPERATIVE`, no ``-ing`` or ``-ed`` ending). Questions, sentences in which
    the proposer speaks as itself ("I can help you ..."), remarks on the prompt's machinery
    (:func:`about_the_prompt`) and text in double quotes do not count. Lenient by design: a false "yes"
    only keeps a proposal to be scored."""
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", _QUOTED.sub(" ", text.replace("’", "'"))):
        if sentence.rstrip(" \"'`*").endswith("?") or _FIRST_PERSON.match(sentence):
            continue  # a question, or the proposer speaking as itself ("I can help you ...")
        # A remark on the module, the program or the instruction itself: its first clause tells the
        # model nothing, whatever its "is to"; a later clause still may ("...; answer the question").
        remark = about_the_prompt(sentence)
        if not remark and _OBLIGATION.search(sentence):
            return True
        parts = re.split(r"([,;(:])", sentence)
        for index, (clause, after) in enumerate(zip(parts[::2], [*parts[1::2], ""], strict=True)):
            words = re.findall(r"[^\W\d_][\w'-]*", clause)
            if not words or (after == ":" and len(words) <= 3) or (remark and index == 0):
                continue  # a label ("Example:", "Mapped Word:") is not a clause
            if _imperative_start(words[0].lower()) or (remark and _OBLIGATION.search(clause)):
                return True
    return False


def about_the_prompt(sentence: str) -> bool:
    """Whether ``sentence`` talks about the prompt's machinery rather than the task: its subject (the
    words before its first auxiliary verb) names the module, the program, the instruction, a field or
    the prompt ("The role of each module is to:", "This instruction is designed to ..."), and it neither
    addresses the model nor states a rule ("This instruction asks you to ...", "Each output field should
    be on its own line" still count as instructions; "The previous instruction should be rephrased" is
    the proposer talking about its own task, so of an instruction or a prompt only "you" counts)."""
    sentence = sentence.strip()
    match = _ABOUT_THE_PROMPT.match(sentence)
    if match is None or _ADDRESSED.search(sentence):
        return False
    if _RULE.search(sentence) and not match.group("noun").lower().startswith(("instruction", "prompt")):
        return False
    verb = _SUBJECT_ENDS.search(sentence)
    return verb is None or verb.start() >= match.end()


def _imperative_start(word: str) -> bool:
    if word in _NOT_IMPERATIVE:
        return False
    return not (len(word) >= 5 and word.endswith(("ing", "ed")))


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _marker_pattern(labels: Iterable[str], *, line_start: bool, proposer: bool = True) -> str:
    names = "|".join(
        re.escape(label).replace(r"\ ", r"[ _]+") for label in sorted(set(labels), key=len, reverse=True)
    )
    if line_start:
        # A label at the start of a line, maybe after a bullet, a quote mark or markdown emphasis; a
        # proposer's own label also after a one-letter label and an article, as the embedded proposer
        # writes them ("A: The module: classify"). A field label keeps to the line's start: "The
        # answer: ..." may be prose.
        prefix = r"(?:[a-z][ \t]*:[ \t]*)?(?:the[ \t]+)?" if proposer else ""
        return (
            rf"(?im)^[ \t>]*(?:[-*+•][ \t]+)?(?:\#{{1,6}}[ \t]*)?{prefix}"
            rf"[*_`\"']*(?P<label>{names})[*_`]*[ \t]*:[*_]*"
        )
    # Inside a line: the exact title-case label after a space or punctuation ("... Dataset Summary: ...").
    return rf"(?m)(?<=[\s.;,!?\"'])(?P<label>{names})[ \t]*:"


def _cut_sections(text: str, labels: Sequence[str], removed: list[str]) -> str:
    """Keep the text outside scaffolding sections and field-label lines (answer sections are kept)."""
    kinds: list[tuple[int, int, str, str]] = []  # (start, end of marker, kind, label)
    groups = (("scaffolding", SCAFFOLDING_LABELS), ("answer", ANSWER_LABELS), ("field label", tuple(labels)))
    for kind, names in groups:
        if not names:
            continue
        # Field labels count at a line's start only: inside a sentence "the Answer:" may be prose.
        for line_start in (True,) if kind == "field label" else (True, False):
            pattern = _marker_pattern(names, line_start=line_start, proposer=kind != "field label")
            for match in re.finditer(pattern, text):
                said = re.sub(r"[^a-z]", "", match.group("label").lower())
                label = next(n for n in names if re.sub(r"[^a-z]", "", n.lower()) == said)
                kinds.append((match.start(), match.end(), kind, label))
    markers: list[tuple[int, int, str, str]] = []
    for marker in sorted(kinds, key=lambda m: (m[0], -(m[1] - m[0]))):
        if markers and marker[0] < markers[-1][1]:
            continue  # overlaps an earlier, longer marker
        markers.append(marker)
    if not markers:
        return text
    parts = [text[: markers[0][0]]]
    for position, (_, end, kind, label) in enumerate(markers):
        limit = markers[position + 1][0] if position + 1 < len(markers) else len(text)
        if kind == "answer":
            parts.append("\n" + text[end:limit])
            continue
        removed.append(f"{kind}: {label}")
        cut = _section_end(text, end, limit) if kind == "scaffolding" else _line_end(text, end, limit)
        parts.append("\n" + text[cut:limit])
    return "".join(parts)


def _line_end(text: str, start: int, limit: int) -> int:
    newline = text.find("\n", start, limit)
    return limit if newline < 0 else newline


def _section_end(text: str, start: int, limit: int) -> int:
    """Where a scaffolding section ends: the rest of its line, then the bullet lines under it (and its
    value's first line when the label stood alone on its line); a blank or plain line ends it."""
    end = _line_end(text, start, limit)
    has_value = bool(text[start:end].strip())
    while end < limit:
        next_end = _line_end(text, end + 1, limit)
        line = text[end + 1 : next_end]
        if not line.strip():
            break
        if _BULLET.match(line) or not has_value:
            has_value = True
            end = next_end
            continue
        break
    return end


def _tidy(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    # A line without a letter (a bullet, a list's numbers: "- 2.", a date) tells the model nothing.
    value = "\n".join(line for line in lines if re.search(r"[^\W\d_]", line))
    value = re.sub(r"[ \t]{2,}", " ", value)
    return unquoted(value)


#: Fewest sentences in a row, none of which instructs, that end a proposal and are cut as rambling.
TRAILING_REMARKS = 3


def _without_trailing_remarks(text: str, removed: list[str]) -> str:
    """``text`` without the :data:`TRAILING_REMARKS` or more sentences that end it after its last one that
    reads as an instruction, none of which does: a small proposer goes on with made-up examples or
    remarks ("... verb of the sentence. The jeweler does not love chocolate. The woman loves chocolate.
    ..."). Fewer are kept, as context an instruction may end with."""
    sentences = [
        (line_no, sentence)
        for line_no, line in enumerate(text.splitlines())
        for sentence in sentences_of(line)
    ]
    instructing = [i for i, (_, sentence) in enumerate(sentences) if reads_as_instruction(sentence)]
    if not instructing or len(sentences) - 1 - instructing[-1] < TRAILING_REMARKS:
        return text
    removed.append("trailing remarks")
    last = instructing[-1]
    lines: dict[int, list[str]] = {}
    for line_no, sentence in sentences[: last + 1]:
        lines.setdefault(line_no, []).append(sentence)
    return "\n".join(" ".join(parts) for parts in lines.values())


def _without_sentences(text: str, drop: Callable[[str], bool], why: str, removed: list[str]) -> str:
    """``text`` without the sentences ``drop`` says to remove (``why`` recorded), line breaks kept."""
    lines = []
    for line in text.splitlines():
        sentences = sentences_of(line)
        kept = [sentence for sentence in sentences if not drop(sentence)]
        if len(kept) < len(sentences):
            removed.append(why)
        lines.append(" ".join(kept))
    return "\n".join(lines)


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


def _without_repeats(text: str, removed: list[str]) -> str:
    """``text`` with every sentence said before removed (a small proposer often writes its instruction
    twice), line breaks kept."""
    seen: set[str] = set()
    lines = []
    for line in text.splitlines():
        kept = []
        for sentence in sentences_of(line):
            key = " ".join(sentence.lower().split())
            if key and key in seen:
                removed.append("repeated sentence")
                continue
            seen.add(key)
            kept.append(sentence)
        if " ".join(kept).strip():
            lines.append(" ".join(kept))
    return "\n".join(lines)


def _stem(word: str) -> str:
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: len(word) - len(suffix)] + replacement
    return word


def content_words(text: str) -> frozenset[str]:
    """Lower-cased, stemmed words of ``text`` that carry meaning (3+ letters, not common or prompt jargon)."""
    words = re.findall(r"[^\W\d_]+", text.lower().replace("_", " "))
    return frozenset(_stem(w) for w in words if len(w) >= 3 and w not in _COMMON and _stem(w) not in _COMMON)


def task_vocabulary(predictor: Predict, *texts: str | None) -> frozenset[str]:
    """Content words of the task: the predictor's field names, labels and descriptions, its original
    instruction, and ``texts`` (the data summary and the program description)."""
    parts = [predictor.instruction, *(t for t in texts if t)]
    for field in predictor.signature.fields:
        parts.extend((field.name, field.label, field.description))
    return frozenset().union(*(content_words(p) for p in parts))


def on_task(instruction: str, vocabulary: frozenset[str]) -> bool:
    """Whether ``instruction`` shares a content word with the task's ``vocabulary``."""
    return bool(content_words(instruction) & vocabulary)


def screen_means(
    original: Mapping[str, float], proposal: Mapping[str, float]
) -> tuple[float, float, int] | None:
    """Means of the original and a proposal on the examples both were scored on, and how many; ``None``
    when fewer than :data:`MIN_SCREENED` (an LM failure leaves an example unscored)."""
    shared = sorted(set(original) & set(proposal))
    if len(shared) < MIN_SCREENED:
        return None
    n = len(shared)
    return sum(original[e] for e in shared) / n, sum(proposal[e] for e in shared) / n, n


def screen_verdict(
    original: Mapping[str, float], proposal: Mapping[str, float], *, task_related: bool
) -> str | None:
    """Why a proposal is dropped after the screen (per-example scores, no demos), or ``None`` to keep it."""
    means = screen_means(original, proposal)
    if means is None:
        return None
    base, score, n = means
    if base - score >= FAR_BELOW - 1e-9:
        return f"scores far below the original on the screen ({score:.2f} vs {base:.2f} on {n} examples)"
    if not task_related and score < base:
        return (
            "off-task: shares no word with the task's fields, instruction or data summary, and scores "
            f"below the original on the screen ({score:.2f} vs {base:.2f} on {n} examples)"
        )
    return None
