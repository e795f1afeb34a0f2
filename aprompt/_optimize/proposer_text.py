"""What the instruction proposer says: its role, goals and style tips, and its worked example (another
task's call and a good instruction for it). A proposal that repeats one of these sentences has it removed
(:mod:`aprompt._optimize.proposal_cleaning`)."""

from __future__ import annotations

from collections.abc import Mapping

from aprompt._optimize.proposal_filter import content_words, sentences_of

TIPS: dict[str, str] = {
    "none": "",
    "creative": "Don't be afraid to be creative when writing the instruction.",
    "simple": "Keep the instruction clear and concise.",
    "description": "Make the instruction informative: describe the task precisely.",
    "high_stakes": "Spell out the high stakes of getting this task right.",
    "persona": "Start the instruction with a persona relevant to the task (e.g. 'You are a ...').",
    "format": "Say exactly what form the answer must take.",
}


#: The proposer's one demo: a call for another task (every grounding field filled) and a good instruction
#: for it, keyed by the proposer's field names. A small proposer copies the form of a worked example far
#: better than it follows a description of one: on the embedded model, 21 of 30 proposals for three bench
#: tasks started with an imperative verb with it, 5 of 30 without, most of those remarks, chat or made-up
#: examples (``bench/results/proposals_worked_example.md``). Its sentences are cut from a proposal that
#: repeats them.
WORKED_EXAMPLE: Mapping[str, str] = {
    "module": "translate: english_text -> french_text",
    "current_instruction": "Translate the text.",
    "dataset_summary": "Short English sentences from travel phrasebooks, each with its French translation.",
    "program_description": "The program translates an English sentence into French with one module.",
    "examples_of_good_calls": "- english_text: Where is the station?; french_text: Où est la gare ?",
    "previous_instructions": "- Translate the text.",
    "tip": "Keep the instruction clear and concise.",
    "proposed_instruction": (
        "Translate the English sentence into natural French. "
        "Keep its meaning and tone, and reply with the French sentence only."
    ),
}
EXAMPLE_SENTENCES = tuple(sentences_of(WORKED_EXAMPLE["proposed_instruction"]))
#: Words of the worked example's topic that no other task's instruction needs: a proposal sentence with
#: one, for a task that does not use it, copies the example ("... translated into a French sentence.").
#: General words of the example ("translate", "sentence", "English") are not listed: other tasks use them.
WORKED_EXAMPLE_TOPIC = content_words("French phrasebook")
ROLE = "You write instructions for one module of a language-model program."
GOAL_SCORED = "Propose a new instruction that scores higher than the previous ones."
GOAL = "Propose a better instruction for this module."
REPLY = "Reply with the instruction only."
#: The sentences of the proposer's own instruction: a proposal that repeats one has it removed.
PROPOSER_SENTENCES: tuple[str, ...] = (ROLE, GOAL_SCORED, GOAL, REPLY)
