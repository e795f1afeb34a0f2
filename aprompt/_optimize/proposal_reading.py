"""Whether a proposal tells the model what to do (:func:`reads_as_instruction`), and whether a sentence
talks about the prompt's machinery rather than the task (:func:`about_the_prompt`)."""

from __future__ import annotations

import re

#: English words that do not start an imperative clause (articles, pronouns other than "you", prepositions,
#: conjunctions, auxiliaries, question words, quantifiers, a reply's "sure", "okay" or "sorry"): a clause
#: starting with one tells the model nothing to do unless it says "you", "should", "must", ...
#: (:data:`_OBLIGATION`).
_NOT_IMPERATIVE = frozenset(
    """a an the this that these those it its i we he she they me us him her them our my his their there
    here in on at for with by from of to into onto as about after before during while since because if
    when whenever although though unless whereas upon within without between among through under over
    than and but or so yet nor is are was were am been has had can could will would shall may might does
    did what which who whom whose why how where each every some any all no none many most such one both
    either neither another other following previous original current above below here's it's that's
    there's let's sure okay ok certainly absolutely yes sorry apologies unfortunately regrettably""".split()
)
_FIRST_PERSON = re.compile(
    r"[^\w]*(?:i|i'm|i'll|i've|i'd|we|we're|we'll|let me|here is|here's)\b", re.IGNORECASE
)
_OBLIGATION = re.compile(
    r"\b(?:you|your|yours|yourself|you're|you'll|should|must|need to|needs to|has to|have to|is to|are to)\b",
    re.IGNORECASE,
)
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


#: A reply that opens by declining the task ("I can't help with that.", "Sorry, I can't assist with that.",
#: "Unfortunately, I cannot provide ...", "As an AI, I am unable to ..."): the proposer saying it will not
#: or cannot, maybe after an apology or a disclaimer, in the first sentence.
_REFUSAL = re.compile(
    r"^[\W]*(?:(?:(?:i'?m\s+|i\s+am\s+|we'?re\s+|so\s+)?sorry|unfortunately|(?:my\s+)?apologies|"
    r"i\s+apologi[sz]e|regrettably|as\s+an?\s+(?:ai|language\s+model|assistant))\b[^.!?\n]*?\b)?"
    r"(?:i|we)\s*(?:can\s*not|cannot|can't|am\s+unable|'m\s+unable|am\s+not\s+able|'m\s+not\s+able|"
    r"won't|will\s+not|must\s+decline)\b",
    re.IGNORECASE,
)


def refuses(text: str) -> bool:
    """Whether ``text`` opens by declining the task ("Sorry, I can't assist with that."): a refusal, never
    an instruction, whatever it goes on to ask ("Please provide more details.").

    Example::

        >>> refuses("Sorry, I can't assist with that. Please provide more details.")
        True
        >>> refuses("Unfortunately, the context is long; answer with the shortest span.")
        False
    """
    return bool(_REFUSAL.match(text.replace("\u2019", "'")))


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
