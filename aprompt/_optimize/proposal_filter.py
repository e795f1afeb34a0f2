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
- **A refusal.** A reply that opens by declining the task ("Sorry, I can't assist with that. Please
  provide more details.", :func:`refuses`) is dropped whole, and the proposer is asked again.
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

The rules live in modules of one job each, whose names this one re-exports:
:mod:`~aprompt._optimize.proposal_scaffolding` (echoed labels), :mod:`~aprompt._optimize.proposal_code`
(code, fences, headings, made-up examples), :mod:`~aprompt._optimize.proposal_sentences` (kinds of sentence
removed), :mod:`~aprompt._optimize.proposal_reading` (whether text instructs),
:mod:`~aprompt._optimize.proposal_text` (sentences and lengths) and :mod:`~aprompt._optimize.proposal_screen`
(the screen). :func:`clean_proposal` chains them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import attrs

from aprompt._optimize.proposal_code import _without_code, _without_examples, unfenced_prose
from aprompt._optimize.proposal_reading import _FIRST_PERSON as _FIRST_PERSON
from aprompt._optimize.proposal_reading import _OBLIGATION, about_the_prompt, reads_as_instruction, refuses
from aprompt._optimize.proposal_reading import _imperative_start as _imperative_start
from aprompt._optimize.proposal_scaffolding import (
    ANSWER_LABELS,
    SCAFFOLDING_LABELS,
    _cut_sections,
    field_labels,
)
from aprompt._optimize.proposal_screen import (
    FAR_BELOW,
    MIN_SCREENED,
    content_words,
    on_task,
    screen_means,
    screen_verdict,
    task_vocabulary,
)
from aprompt._optimize.proposal_sentences import (
    ECHO_MIN_WORDS,
    ECHO_OWN_SHARE,
    ECHO_SHARE,
    code_names,
    echoes,
    holds_a_placeholder,
    is_labeled_example,
    items_on_their_lines,
    names_code,
    quotes_an_example,
    restated_new_instruction,
    speaks_of_classes,
    speaks_of_the_instruction,
)
from aprompt._optimize.proposal_text import (
    WIDE_CHAR_WEIGHT,
    _ends_with_colon,
    finished_part,
    sentences_of,
    text_length,
    whole_sentences,
)
from aprompt._optimize.quotes import unquoted

#: Fewest characters (letters included) an instruction must keep after cleaning, counted as
#: :func:`text_length` counts them.
MIN_USABLE_CHARS = 12


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
    if refuses(text.strip()):  # whatever it goes on to say, the proposer declined the task
        return Cleaned(None, (), f"the proposer refused: {_excerpt(text)}")
    removed: list[str] = []
    kept = items_on_their_lines(_without_code(unfenced_prose(text.strip()), removed))
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
    spoken: list[str] = []
    without = _without_sentences(kept, speaks_of_the_instruction, "proposer sentence", spoken)
    restated = _restated(kept) if spoken and not _has_letters(without) else ""
    if _has_letters(restated):
        # Nothing but "The new instruction is to ...": the instruction it frames, said as one.
        kept = restated
        removed.append("the proposer's framing")
    else:
        kept = without
        removed.extend(spoken)
    kept = _without_lines(kept, is_labeled_example, "made-up examples", removed)
    kept = _without_sentences(kept, holds_a_placeholder, "template placeholders", removed)
    kept = _without_sentences(kept, quotes_an_example, "made-up examples", removed)
    kept = _without_sentences(kept, speaks_of_classes, "names code", removed)
    if known_names is not None:
        kept = _without_sentences(
            kept, lambda sentence: names_code(sentence, known_names), "names code", removed
        )
    fields = {word for label in labels for word in _words(label)} | (known_names or frozenset())
    kept = _without_fieldless_remarks(_tidy(_without_preamble(kept, removed)), fields, removed)
    value = _without_trailing_remarks(_without_repeats(kept, removed), removed)
    removed = list(dict.fromkeys(removed))
    if text_length(value) >= MIN_USABLE_CHARS and not reads_as_instruction(value):
        return Cleaned(None, tuple(removed), f"reads as no instruction: {_excerpt(value)}")
    if text_length(value) < MIN_USABLE_CHARS or not _has_letters(value):
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


def remarks_on_the_prompt(sentence: str) -> bool:
    """Whether ``sentence`` talks about the prompt's machinery (its module, program, instruction or
    fields: :func:`about_the_prompt`) and tells the model nothing to do: "The output fields are
    2017-01-01-21-21.", never "The answer field must be one word."

    Example::

        >>> remarks_on_the_prompt("The output fields are 2017-01-01-21-21.")
        True
        >>> remarks_on_the_prompt("The answer field must be a single word.")
        False
    """
    if not about_the_prompt(sentence):
        return False
    # A later clause of two words or more may still instruct ("...; answer it with a number"); one
    # word after a bracket ("BELIEF(F).") does not.
    for clause in re.split(r"[,;(:]", sentence)[1:]:
        words = re.findall(r"[^\W\d_][\w'-]*", clause)
        if len(words) >= 2 and (_imperative_start(words[0].lower()) or _OBLIGATION.search(clause)):
            return False
    return True


def _without_fieldless_remarks(text: str, fields: set[str] | frozenset[str], removed: list[str]) -> str:
    """``text`` without the remarks on the prompt (:func:`remarks_on_the_prompt`) that name none of the
    program's ``fields`` (lower-case words): beside an instruction, "The output fields are
    2017-01-01-21-21." goes and "The module receives a goal." stays as context. A proposal of remarks
    alone is left whole: it reads as no instruction and is dropped as such."""
    remarks: list[str] = []
    kept = _without_sentences(
        text,
        lambda sentence: remarks_on_the_prompt(sentence) and not fields & _words(sentence),
        "remarks on the prompt",
        remarks,
    )
    if not remarks or not reads_as_instruction(kept):
        return text
    removed.extend(remarks)
    return kept


def _words(text: str) -> set[str]:
    return {word.lower() for word in re.findall(r"[^\W\d_]+", text)}


def _has_letters(text: str) -> bool:
    return bool(re.search(r"[^\W\d_]", text))


def _restated(text: str) -> str:
    """``text`` with each sentence framing the proposer's new instruction ("The new instruction is to
    ...") replaced by that instruction, and the other sentences that speak of an instruction removed."""
    lines = []
    for line in text.splitlines():
        kept = []
        for sentence in sentences_of(line):
            restated = restated_new_instruction(sentence)
            if restated is not None:
                kept.append(restated)
            elif not speaks_of_the_instruction(sentence):
                kept.append(sentence)
        lines.append(" ".join(kept))
    return "\n".join(lines)


def _without_lines(text: str, drop: Callable[[str], bool], why: str, removed: list[str]) -> str:
    """``text`` without the lines ``drop`` says to remove (``why`` recorded)."""
    lines = text.splitlines()
    kept = [line for line in lines if not drop(line)]
    if len(kept) < len(lines):
        removed.append(why)
    return "\n".join(kept)


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


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _tidy(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    # A line without a letter (a bullet, a list's numbers: "- 2.", a date) tells the model nothing.
    value = "\n".join(line for line in lines if _has_letters(line))
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


__all__ = [
    "ANSWER_LABELS",
    "ECHO_MIN_WORDS",
    "ECHO_OWN_SHARE",
    "ECHO_SHARE",
    "FAR_BELOW",
    "MIN_SCREENED",
    "MIN_USABLE_CHARS",
    "SCAFFOLDING_LABELS",
    "TRAILING_REMARKS",
    "WIDE_CHAR_WEIGHT",
    "Cleaned",
    "about_the_prompt",
    "clean_proposal",
    "code_names",
    "content_words",
    "echoes",
    "field_labels",
    "finished_part",
    "is_labeled_example",
    "names_code",
    "on_task",
    "quotes_an_example",
    "reads_as_instruction",
    "refuses",
    "remarks_on_the_prompt",
    "screen_means",
    "screen_verdict",
    "sentences_of",
    "speaks_of_classes",
    "speaks_of_the_instruction",
    "task_vocabulary",
    "text_length",
    "unfenced_prose",
    "whole_sentences",
]
