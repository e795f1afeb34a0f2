"""Candidates worth searching: proposals cleaned of echoed scaffolding and field labels, screened against
the original instruction; diverse demo sets of several sizes up to one bound."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt import Example, Predict, named_predictors
from aprompt._optimize.bootstrap import bootstrap_demo_sets, size_ladder
from aprompt._optimize.proposal_cleaning import clean_reply, validate_instruction
from aprompt._optimize.proposal_filter import (
    Cleaned,
    finished_part,
    on_task,
    screen_verdict,
    sentences_of,
    task_vocabulary,
    whole_sentences,
)
from aprompt.testing.fake_openai import ChatRequest, FakeOpenAIServer, RecordedRequest
from tests.optimize.qa_task import (
    ORIGINAL_INSTRUCTION,
    QAProgram,
    answers,
    exact_match,
    is_proposal,
    item_of,
    lm_for,
    messages_of,
    qa_examples,
    system_of,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: The best instruction the demo printed (scripts/demo.sh): the proposer's own prompt, echoed.
DEMO_ECHO = (
    "Current Instruction: Answer the question. Dataset Summary: The questions ask for the answer of "
    "numbered items; each answer is short. Previous Instructions: - Answer the question. - The solution "
    "is already implemented."
)
#: An embedded model's proposal for a word-mapping task; it reads as no instruction, so cleaning drops it.
REMARK = "A simple example of a creative process is that of a hero."
#: The same, put as an instruction: only the screen can drop it.
OFF_TOPIC = "Tell a simple story of a hero's creative process."
#: Proposals the embedded model wrote for the demo's negation task: remarks, none an instruction.
DEMO_REMARKS = (
    "The code to take a sentence as input and return the sentence with its negation removed would be:\n```",
    "The following is a rewritten version of the previous instruction:\nThe previous instruction has been",
    "Implementing a language-model to create a program that generates and processes sentences.",
    "The jewelers have not visited me, as evidenced by the use of a double negation in English.",
)
#: Proposals the embedded model wrote for intent_goal (bench/quality.py), which two runs returned: remarks
#: on the module, the program or the instruction itself, whose "is to" read as an instruction.
ABOUT_THE_PROMPT = (
    "The purpose of the output field is to provide a list of actions that can be performed when the current "
    "instruction is executed. The output is a list of actions that can be performed by the previous "
    "instruction.",
    "The goal of this instruction is to demonstrate that the user's task is to make an informed decision "
    "based on data and that they need to use their imagination in order to solve this task. The "
    "instruction is designed to be taken literally and has a message to convey.",
    "1. The role of each module is to:\n2. Creating a new instance of the class\n3. Implementing the intent "
    "to the utterance\n4. Passing the intent to the next module",
    # Its "should" is the proposer's task, not the model's; the "you" is inside a quote left open.
    "The previous instruction should be rephrased to make the instruction more engaging and less critical. "
    'For example, this can become: "Here is a simple example of a three-step process that can be used to '
    "help you to improve your coding skills.",
    # Only the quoted words, split at their commas, looked like clauses starting with a verb.
    "Output: The dictionary returned from the function contains a single key-value pair named "
    '"Intent,Intent".',
)
#: The same runs' other returned proposal: the proposer's labels after a one-letter label and an article.
LETTERED_ECHO = (
    "A: The module: classify\nA: The program:\nDescription:\nThe module defines an instruction that asks the "
    "user for a list of movies available at a local cinema in Chile.\nExample:\n- Input:\n- Output:"
)
BUDGET = {"n_candidates": 4, "val_size": 12, "n_trials": 4, "minibatch_size": 6, "parallel_trials": 2}


# -- the pure cleaning and screening rules ------------------------------------------------------------
def test_the_demos_scaffolding_echo_leaves_nothing_usable() -> None:
    cleaned = clean_reply(DEMO_ECHO, Predict("question -> answer", instruction=ORIGINAL_INSTRUCTION))
    assert cleaned.text is None
    assert cleaned.reason.startswith("echoes the proposer's scaffolding")
    assert {"scaffolding: Current Instruction", "scaffolding: Dataset Summary"} <= set(cleaned.removed)


def test_an_instruction_written_twice_is_kept_once() -> None:
    # The demo's embedded proposer wrote this one twice, and the search returned it so.
    once = (
        "This is a simple and expressive implementation of the given language-model program, where each "
        "module is a function that takes a sentence as input, negates it, and returns a new sentence."
    )
    cleaned = clean_reply(f"{once}\n{once}", Predict("sentence -> negated", instruction="Negate it."))
    assert cleaned.text == once and cleaned.removed == ("repeated sentence",)
    within = clean_reply("Negate the sentence. Keep its tense. negate  the sentence.", Predict("a -> b"))
    assert within.text == "Negate the sentence. Keep its tense."
    assert clean_reply("Negate the sentence.\nNegate the sentence.", Predict("a -> b")).text == (
        "Negate the sentence."
    )


def test_rules_that_share_a_frame_are_not_repeats() -> None:
    # Removing sentences most of whose words an earlier one has (tried against a small proposer's loops:
    # "The goal is to have this task done. The code is to have this task done.") would cut this rule.
    rules = "If the verb is a form of be, put not after it. If the verb is a form of have, put not after it."
    assert clean_reply(rules, Predict("sentence -> negated", instruction="Negate it.")).text == rules


def test_a_sentence_that_copies_the_worked_examples_topic_is_removed_unless_the_task_shares_it() -> None:
    # intent_goal's classify stage, seed 3 of 2026-12-05: the search returned this with its last line.
    classify = Predict(
        "utterance, goal -> intent",
        instruction="Classify the user's request to a voice assistant into one of the intents.",
    )
    reply = (
        "Use the intent to determine the destination of your request.\n"
        "The function should take a string as input, and return a string with the requested intent "
        "translated into a French sentence."
    )
    cleaned = clean_reply(reply, classify)
    assert cleaned.text == "Use the intent to determine the destination of your request."
    assert cleaned.removed == ("another task's words",)
    # A task about French keeps them.
    translate = Predict("english_text -> french_text", instruction="Translate the text.")
    own = "Translate the English sentence into natural French, keeping its tone."
    assert clean_reply(own, translate) == Cleaned(own)


def test_a_sentence_telling_what_the_current_instruction_says_is_removed() -> None:
    # The demo of 2026-12-05 (fourth session) returned this proposal.
    negate = Predict("sentence -> negated", instruction="Negate the sentence.")
    reply = (
        "Rewrite the sentence to negate its verb. "
        "The current instruction is to remove the word 'the' from the sentence."
    )
    cleaned = clean_reply(reply, negate)
    assert cleaned.text == "Rewrite the sentence to negate its verb."
    assert cleaned.removed == ("proposer sentence",)
    own = "Rewrite the sentence so that the instruction it gives is the opposite."
    assert clean_reply(own, negate) == Cleaned(own)


def test_a_sentence_telling_what_the_new_instruction_says_is_removed_or_restated() -> None:
    # The demo of 2026-12-07 proposed this, and it became a search candidate.
    negate = Predict("sentence -> negated", instruction="Negate the sentence.")
    reply = (
        "Rewrite the sentence so that it says the opposite: negate its verb.\n"
        'The new instructions are to change "their" to "theirself" but the code is to change "they" to '
        '"them" so as to make it a gender specific case of "them".'
    )
    cleaned = clean_reply(reply, negate)
    assert cleaned.text == "Rewrite the sentence so that it says the opposite: negate its verb."
    assert cleaned.removed == ("proposer sentence",)
    # Alone, the framing gives its instruction, said as one; what else speaks of an instruction goes.
    framed = (
        "The current instruction is to negate. "
        "The proposed instruction is to rewrite the sentence with its verb negated."
    )
    assert clean_reply(framed, negate) == Cleaned(
        "Rewrite the sentence with its verb negated.", ("the proposer's framing",)
    )
    # Reading back the current instruction alone still leaves nothing.
    alone = clean_reply("The current instruction is to remove the word 'the'.", negate)
    assert alone.text is None and alone.removed == ("proposer sentence",)
    own = "Rewrite the sentence in the style the new instruction asks for."
    assert clean_reply(own, negate) == Cleaned(own)


@pytest.mark.parametrize(
    ("reply", "kept", "removed"),
    [
        # The demo's proposals of 2026-12-05 (fifth session), as the search saw them.
        (
            "Rewrite the sentence to negate its verb.\nReply: - The jewelers are not allowed to write a "
            "story, but the jewelers are allowed to write a story\nThe solution to the task is to create a "
            "new instance of negate, which is a subclass of the negate class that is specifically designed "
            "to avoid writing a story.",
            "Rewrite the sentence to negate its verb.",
            ("made-up examples", "names code"),
        ),
        (
            "Rewrite the sentence so that it says negate its verb.\nThe jeweler visits the farm, negated: "
            "The jeweler does not visit the farm\nThe jeweler does not visit the farm, negated: The jeweler "
            "does not visit the farm",
            "Rewrite the sentence so that it says negate its verb.",
            ("made-up examples",),
        ),
        (
            "Rewrite the sentence so that it says the opposite: negate its verb. Provide the original "
            'sentence and its negated version. The original sentence is "The jeweler uses reading glasses '
            'to read the books." The negated sentence is "The jeweler does not use reading glasses to read '
            "the books",
            "Rewrite the sentence so that it says the opposite: negate its verb. Provide the original "
            "sentence and its negated version.",
            ("made-up examples",),
        ),
    ],
)
def test_made_up_labeled_or_quoted_examples_and_class_talk_are_removed(
    reply: str, kept: str, removed: tuple[str, ...]
) -> None:
    negate = Predict("sentence -> negated", instruction="Negate the sentence.")
    assert clean_reply(reply, negate) == Cleaned(kept, removed)


@pytest.mark.parametrize(
    ("signature", "reply", "kept", "removed"),
    [
        # The embedded model's proposals of 2026-12-07 (`bench.proposals`, with the worked example).
        (
            "utterance -> intent",
            "Find the movies with the highest ticket price.\n"
            "- Input Field: {current_instruction} {current_instruction}\n"
            "- Output Field: {output_field} {output_field} {input_field}\n- Output Field:\n{output_field}",
            "Find the movies with the highest ticket price.",
            ("scaffolding: Input Field", "scaffolding: Output Field"),
        ),
        (
            "question -> answer: int",
            "Count the objects the question asks about. - Question: I have two pianos. How many people can "
            "I call?; answer: 5",
            "Count the objects the question asks about.",
            ("field label: Question",),
        ),
        (
            "question -> answer: int",
            "Count the objects the question asks about. - Answer: 11",
            "Count the objects the question asks about.",
            ("field label: Answer",),
        ),
        (
            "question -> answer: int",
            "Count the objects. - The count: I have two pianos and a violin, so 3",
            "Count the objects.",
            ("made-up examples",),
        ),
        (
            "question -> answer: int",
            "Reply with {answer} only. Count the objects the question asks about.",
            "Count the objects the question asks about.",
            ("template placeholders",),
        ),
        # intent_goal's describe stage, seed 3 of `bench.quality` on 2026-12-07: the search returned it.
        (
            "utterance -> goal",
            "Say in a few words what the user wants the voice assistant to do. Do not hesitate to tell them "
            "how to do it.\nThe output fields are 2017-01-01-21-21-21-22.11.11.BELIEF(F).",
            "Say in a few words what the user wants the voice assistant to do. Do not hesitate to tell them "
            "how to do it.",
            ("remarks on the prompt",),
        ),
        # A remark on the prompt that names a field of the program is context, and stays.
        (
            "utterance -> goal",
            "Say what the user wants. The module receives an utterance.",
            "Say what the user wants. The module receives an utterance.",
            (),
        ),
        # An item of the instruction's own rules moves to its own line and stays.
        (
            "question -> answer: int",
            "Count the objects. - Note: reply with digits.",
            "Count the objects.\n- Note: reply with digits.",
            (),
        ),
        # Braces that are not a placeholder stay.
        (
            "question -> answer: int",
            'Count the objects. Reply as JSON, such as {"answer": 3}.',
            'Count the objects. Reply as JSON, such as {"answer": 3}.',
            (),
        ),
    ],
)
def test_placeholders_field_scaffolding_remarks_and_inline_made_up_items_are_removed(
    signature: str, reply: str, kept: str, removed: tuple[str, ...]
) -> None:
    program = Predict(signature, instruction="Do the task.")
    assert clean_reply(reply, program) == Cleaned(kept, removed)


@pytest.mark.parametrize(
    "reply",
    [
        "Rewrite the sentence so that it says the opposite: negate its verb.",
        "Negate the verb.\nNote: keep the tense of the verb.",
        # A label of the instruction's own rules, with a statement after it: part of the instruction.
        "Negate the verb.\nNote: the subject stays as it is.",
        "Negate the verb.\nOutput format: one sentence, no quotes.",
        "Negate the verb.\nConstraints: no explanations, no lists.",
        'Classify the request. The intents are "play music", "set alarm" and "get weather".',
        'Say "The sentence is negated." when you are done.',
        "Count the instances of the word in the sentence.",
    ],
)
def test_an_instruction_with_a_colon_a_quoted_label_or_the_word_instances_is_kept(reply: str) -> None:
    program = Predict("sentence -> answer", instruction="Do the task.")
    assert clean_reply(reply, program) == Cleaned(reply)


def test_a_sentence_naming_code_the_task_does_not_have_is_removed_and_field_names_are_kept() -> None:
    # intent_goal's classify stage, seed 3 run again on 951c7e4: the search returned this instruction.
    classify = Predict(
        "utterance, user_goal -> intent",
        instruction="Classify the user's request to a voice assistant into one of the intents.",
    )
    reply = (
        "Use the function describe_goal to create a new utterance, define the intent using "
        "define_intent_function. Use the function classify_to_list_of_intent to return the intent list."
    )
    cleaned = clean_reply(reply, classify)
    assert cleaned.text is None
    assert cleaned.removed == ("names code",)
    # The program's own field names are words the task's model is shown: such a sentence stays.
    own = "Read the user_goal first. Then name the intent the utterance asks for."
    assert clean_reply(own, classify) == Cleaned(own)
    mixed = "Read the user_goal first. Call parse_goal_tokens on it. Then name the intent."
    assert clean_reply(mixed, classify).text == "Read the user_goal first. Then name the intent."


def test_a_tip_copied_with_a_word_changed_is_removed_and_the_worked_examples_form_is_kept() -> None:
    negate = Predict("sentence -> negated", instruction="Negate the sentence.")
    # The demo of 2026-12-05 returned this proposal: the persona tip, its example filled in.
    reply = (
        "Rewrite the sentence so that it says the opposite: negate its verb. Start the instruction with a "
        'persona relevant to the task (e.g. "You are a doctor").'
    )
    cleaned = clean_reply(reply, negate)
    assert cleaned.text == "Rewrite the sentence so that it says the opposite: negate its verb."
    assert cleaned.removed == ("proposer sentence",)
    # The worked example's form, taken for this task, is what a proposal should be.
    formed = "Negate the main verb. Keep its meaning and tone, and reply with the negated sentence only."
    assert clean_reply(formed, negate) == Cleaned(formed)
    # A sentence that shares a tip's frame but says something of its own is kept.
    own = "Negate the main verb. Keep the answer clear and concise."
    assert clean_reply(own, negate) == Cleaned(own)


def test_a_sentence_goes_on_after_an_abbreviation() -> None:
    assert sentences_of("Name a persona (e.g. a nurse). Then answer, i.e. reply.") == [
        "Name a persona (e.g. a nurse).",
        "Then answer, i.e. reply.",
    ]


def test_lines_without_a_letter_are_removed() -> None:
    # The embedded proposer's list numbers and a date, with no instruction on their lines.
    reply = "1. 2022-06-09 12:31:03\nNegate the main verb.\n- 2.\n3."
    assert clean_reply(reply, Predict("sentence -> negated", instruction="Negate it.")).text == (
        "Negate the main verb."
    )


def test_the_demos_scaffolding_echo_on_separate_lines_leaves_nothing_usable() -> None:
    lines = (
        DEMO_ECHO.replace(" Dataset", "\nDataset").replace(" Previous", "\nPrevious").replace(" - ", "\n- ")
    )
    cleaned = clean_reply(lines, Predict("question -> answer"))
    assert cleaned.text is None and "scaffolding" in cleaned.reason


def test_an_instruction_after_echoed_scaffolding_is_kept_alone() -> None:
    reply = (
        "Current Instruction: Answer the question.\nProposed Instruction: Reply with the item's code only."
    )
    cleaned = clean_reply(reply, Predict("question -> answer"))
    assert cleaned.text == "Reply with the item's code only."
    assert cleaned.note == "cleaned: removed scaffolding: Current Instruction"


def test_a_first_line_introducing_the_instruction_is_removed() -> None:
    predictor = Predict("sentence -> negated", instruction="Negate the sentence.")
    # The embedded proposer wrote this first line above the instruction the demo showed.
    body = "Rewrite the sentence so that its verb is negated.\nKeep every other word."
    for preamble in (
        "A more detailed and polished version of the program could be:",
        "Sure, here is the new instruction:",
        "**The improved instruction:**",
    ):
        cleaned = clean_reply(f"{preamble}\n{body}", predictor)
        assert cleaned.text == body, cleaned.text
        assert cleaned.removed == ("preamble",)
    # A first line that is itself an instruction, or a colon line with nothing after it, stays.
    listing = "Classify the utterance into one of these intents:\n- play_music\n- get_weather"
    assert clean_reply(listing, predictor).removed == ()
    assert clean_reply("Negate the verb of the sentence as follows:", predictor).removed == ()
    # Further down, a line in which the proposer speaks as itself to introduce what follows goes too (the
    # demo returned one); a line introducing a list in the task's own voice stays.
    voiced = f"Negate the sentence.\nHere is a very short and very elegant way to explain it:\n{body}"
    assert clean_reply(voiced, predictor).text == f"Negate the sentence.\n{body}"
    listing = "Classify the utterance.\nThe intents are:\n- play_music\n- get_weather"
    assert clean_reply(listing, predictor).text == listing


def test_lines_starting_with_a_field_label_are_removed() -> None:
    reply = "Map each word to its code word.\nWord: cat\nMapped Word: zeb\nword: dog"
    cleaned = clean_reply(reply, Predict("word -> mapped_word"))
    assert cleaned.text == "Map each word to its code word."
    assert set(cleaned.removed) == {"field label: Word", "field label: Mapped Word"}


def test_a_field_name_inside_a_sentence_is_kept() -> None:
    reply = "Give the Answer as one word, with no Question repeated."
    assert clean_reply(reply, Predict("question -> answer")).text == reply


def _assert_dropped_and_kept(predictor: Predict, remarks: Sequence[str], kept: Sequence[str]) -> None:
    """Each of ``remarks`` is dropped as no instruction (or as a made-up example, when it is labeled
    text or quotes one); each of ``kept`` comes through unchanged."""
    for remark in remarks:
        cleaned = clean_reply(remark, predictor)
        reasons = ("reads as no instruction", "nothing usable is left after removing made-up examples")
        assert cleaned.text is None and cleaned.reason.startswith(reasons), remark
    for instruction in kept:
        assert clean_reply(instruction, predictor).text == instruction, instruction


def test_a_remark_that_tells_the_model_nothing_to_do_is_dropped() -> None:
    predictor = Predict("sentence -> negated", instruction="Rewrite the sentence to say the opposite.")
    kept = (
        "Rewrite the sentence so that it says the opposite: negate its verb.",
        "Given an utterance, determine its intent.",
        "In this task, classify the utterance.",
        "The task is to count the objects.",
        "You are a linguist. Negation flips the meaning.",
        "Carefully read the question, then count.",
        "Do not repeat the sentence.",
        "Classez la demande de l'utilisateur.",
    )
    _assert_dropped_and_kept(predictor, (REMARK, *DEMO_REMARKS), kept)


def test_a_remark_on_the_module_program_or_instruction_is_no_instruction() -> None:
    predictor = Predict("utterance, goal -> intent", instruction="Classify the request using the goal.")
    # The same subjects with a rule, addressed to the model, or beside an instruction still count.
    kept = (
        "Each output field should be on its own line.",
        "This instruction asks you to classify the utterance.",
        "The program must reply with one intent.",
        "Classify the utterance. The module receives a goal.",
        "The class label must be one of: play_music, get_weather.",
        "The answer to the program's question is to be one word.",
        "Those instructions are examples; answer the question.",
        'Reply "yes" if the goal is stated, "no" otherwise.',
        'Classify the utterance as one of: "play_music", "get_weather".',
    )
    _assert_dropped_and_kept(predictor, ABOUT_THE_PROMPT, kept)


def test_scaffolding_labels_after_a_letter_label_and_an_article_are_cut() -> None:
    cleaned = clean_reply(LETTERED_ECHO, Predict("utterance, goal -> intent"))
    assert cleaned.text is None
    assert {"scaffolding: Module", "scaffolding: Program"} <= set(cleaned.removed)
    reply = "A: The module: classify\nProposed Instruction: Name the user's intent in one word."
    assert clean_reply(reply, Predict("utterance -> intent")).text == "Name the user's intent in one word."


def test_a_proposal_cut_to_whole_sentences_is_checked_again() -> None:
    # The reply's only instruction came after the length at which it is cut.
    remark = "The program negates sentences. " * 25
    assert validate_instruction(whole_sentences(f"{remark}Negate the verb.", 600), []) == (
        "reads as no instruction"
    )
    assert validate_instruction("Negate the verb.", []) is None


#: The demo's embedded proposer wrote this (cut at its token budget inside the code), and the search
#: returned it as the optimized instruction.
CODE_ECHO = (
    "This is a perfect example of how a beginner in language-building can create a new sentence with the "
    "opposite verb.\nHere is the code with the example sentences:\n```python\nclass NegateSentence:\n"
    "def __init__(self, sentence: str):\nsentence = sentence.strip()\n"
    'sentence = sentence.replace("-", "non-negative")\nsentence = sentence.'
)


def test_code_and_the_line_introducing_it_are_never_part_of_an_instruction() -> None:
    predictor = Predict("sentence -> negated", instruction="Negate the sentence.")
    cleaned = clean_reply(CODE_ECHO, predictor)
    # What is left is a remark, so nothing usable remains.
    assert cleaned.text is None and cleaned.removed == ("code",)
    assert cleaned.reason.startswith("reads as no instruction: 'This is a perfect example")
    fenced = "Negate the sentence.\nFor example:\n\n```\nnegate('x')\n```\nReply with the sentence only."
    assert clean_reply(fenced, predictor).text == "Negate the sentence.\nReply with the sentence only."
    unfenced = "Put 'not' after the verb.\ndef negate(s):\n    return s\nimport re\nwords = s.split()"
    assert clean_reply(unfenced, predictor).text == "Put 'not' after the verb."
    # Blocks, calls and what continues them (bench.proposals saw these for the intent task).
    blocks = "Do it.\ntry:\n  x()\nexcept Exception as e:\nprint(f'{e}')\nclassify(\n\"user\"\n)\nReply."
    assert clean_reply(blocks, predictor).text == "Do it.\nReply."
    # Capitalised prose ending in a colon is no block; a quoted line after prose is no code.
    prose_heads = "If unsure: reply unknown.\nFor each request:\n- classify it."
    assert clean_reply(prose_heads, predictor).text == prose_heads
    quoted = 'Here is the new instruction:\n"Negate the main verb of the sentence."'
    assert clean_reply(quoted, predictor).text == "Negate the main verb of the sentence."
    # Prose that names a variable or an equals sign is not code; nor is a colon line before prose.
    prose = "Set the count = 3 when asked.\nRules:\n- Reply with the negated sentence only."
    assert clean_reply(prose, predictor).text == prose


@pytest.mark.parametrize(
    "reply",
    [
        "```text\nNegate the main verb of the sentence.\n```",
        "```Markdown\nNegate the main verb of the sentence.\n```",
        "A better version could be:\n```text\nNegate the main verb of the sentence.\n```",
        "```text\nNegate the main verb of the sentence.",  # cut before its closing fence
        "```md\nNegate the main verb of the sentence.\n```\n```python\nnegate('x')\n```",
    ],
)
def test_an_instruction_fenced_as_prose_is_kept_without_its_fence_or_tag(reply: str) -> None:
    predictor = Predict("sentence -> negated", instruction="Negate the sentence.")
    assert clean_reply(reply, predictor).text == "Negate the main verb of the sentence."


#: The demo's embedded proposer wrote this, with its worked example, and the search returned it whole.
EXAMPLES_ECHO = (
    "Re-write the sentence so that it says the opposite: negate its verb.\n# Help\nProposed Instructions:\n"
    "- Rewrite the sentence so that it says the opposite of the original verb is negated.\n"
    '- Example: "The doctor has needed assistance, not the chef has needed assistance."\n'
    '- Example of example: "The doctor and the chef have the same job, not the chef and the doctor."\n'
    '# Example of example\nThe negation of "The doctor has need of assistance" is "The chef has need of '
    "assistance."
)


def test_made_up_examples_headings_and_a_list_of_proposals_are_cut() -> None:
    predictor = Predict("sentence -> negated", instruction="Negate the sentence.")
    cleaned = clean_reply(EXAMPLES_ECHO, predictor)
    assert cleaned.text == "Re-write the sentence so that it says the opposite: negate its verb."
    assert set(cleaned.removed) == {"made-up examples and headings", "scaffolding: Proposed Instructions"}
    # A label alone on its line takes the lines under it, to a blank line; headings go, their text stays.
    listed = "Classify the intent.\nExamples:\nplay jazz -> play_music\nwake me -> set_alarm\n\nReply once."
    assert clean_reply(listed, predictor).text == "Classify the intent.\nReply once."
    structured = "# Task\nClassify the intent.\n## Rules\nReply with one intent."
    assert clean_reply(structured, predictor).text == "Classify the intent.\nReply with one intent."
    # "for example" inside a sentence is the instruction's own.
    inline = "Classify the intent, for example: play_music for a song."
    assert clean_reply(inline, predictor).text == inline
    only = clean_reply("# Example\nplay jazz -> play_music", predictor)
    assert only.text is None and only.reason == (
        "nothing usable is left after removing made-up examples and headings"
    )


def test_a_made_up_example_with_an_article_or_a_label_of_the_data_is_cut() -> None:
    # The embedded proposer on intent_goal (stop 43): the intent after its label is an identifier, not a
    # verb, and "The example:" is an example label as "Example:" is.
    predictor = Predict("utterance, goal -> intent", instruction="Classify the user's request.")
    reply = (
        "Classify the user's request to a voice assistant into the intents.\n"
        "The intent: search_book_restaurant\n"
        "The example: - utterance: The goal is to find the movie theater, and get the movie.\n"
        "The intent: search_movie_restaur"
    )
    cleaned = clean_reply(reply, predictor)
    assert cleaned.text == "Classify the user's request to a voice assistant into the intents."
    assert {"made-up examples", "made-up examples and headings"} <= set(cleaned.removed)
    # An identifier after a colon inside an instruction stays: the sentence tells the model what to do.
    kept = "Classify the request: reply search_book_restaurant for a table."
    assert clean_reply(kept, predictor).text == kept


def test_three_or_more_sentences_ending_a_proposal_after_its_last_instruction_are_cut() -> None:
    predictor = Predict("sentence -> negated", instruction="Negate the sentence.")
    # The demo returned this one (the search paired it with its best demo set).
    rambling = (
        "Rewrite the sentence to negate the verb of the sentence. The jeweler does not love chocolate. The "
        "jewelers do not love chocolate. The woman does not love chocolate. The woman loves chocolate."
    )
    cleaned = clean_reply(rambling, predictor)
    assert cleaned.text == "Rewrite the sentence to negate the verb of the sentence."
    assert cleaned.removed == ("trailing remarks",)
    # Two remarks are context; remarks before a last instruction are kept however many.
    context = "Classify the intent. The intents are music and alarms. They never overlap."
    assert clean_reply(context, predictor).text == context
    between = "Classify it.\nThe intents are music and alarms.\nThey never overlap.\nSome are rare.\nReply."
    assert clean_reply(between, predictor).text == between


def test_a_cut_reply_loses_its_unfinished_sentence_and_keeps_its_whole_ones() -> None:
    assert finished_part("Negate the verb. Then add it to") == "Negate the verb."
    assert finished_part("To create a model that can predict the negation and then add it to") == ""
    # Earlier lines ended with a line break, so they are whole; a list number's period ends nothing.
    assert finished_part("Rules:\n1. Negate the verb.\n2. Keep the rest\n3. Do") == (
        "Rules:\n1. Negate the verb.\n2. Keep the rest"
    )
    assert finished_part('Reply "yes" or "no."') == 'Reply "yes" or "no."'
    assert finished_part("Negate the verb.  ") == "Negate the verb."


def test_an_off_topic_proposal_shares_no_word_with_a_word_mapping_task() -> None:
    predictor = Predict("word -> mapped_word", instruction="Map the word to its counterpart.")
    vocabulary = task_vocabulary(predictor, "Each input is an English word; the output is a made-up word.")
    assert clean_reply(OFF_TOPIC, predictor).text == OFF_TOPIC  # usable text: only the screen can drop it
    assert not on_task(OFF_TOPIC, vocabulary)
    assert on_task("Translate each English word into its made-up counterpart.", vocabulary)


def test_the_screen_drops_an_off_task_proposal_that_scores_below_the_original() -> None:
    original = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0, "e": 0.0}
    worse = {**original, "a": 0.0}
    assert screen_verdict(original, worse, task_related=True) is None, (
        "one example is noise for an on-task one"
    )
    verdict = screen_verdict(original, worse, task_related=False)
    assert verdict is not None and verdict.startswith("off-task") and "0.20 vs 0.40 on 5 examples" in verdict
    assert screen_verdict(original, original, task_related=False) is None, "not worse: kept"


def test_the_screen_drops_a_proposal_far_below_the_original_even_on_task() -> None:
    original = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "e": 0.0}
    verdict = screen_verdict(original, {**original, "a": 0.0, "b": 0.0}, task_related=True)
    assert verdict is not None and verdict.startswith("scores far below the original")


def test_a_screen_of_fewer_than_three_shared_examples_decides_nothing() -> None:
    # Two examples were left unscored for the proposal by LM failures.
    original = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert screen_verdict(original, {"a": 0.0, "b": 0.0}, task_related=False) is None


def test_sizes_halve_from_the_bound_down_to_one() -> None:
    assert size_ladder(8) == (8, 4, 2, 1)
    assert size_ladder(3) == (3, 1)
    assert size_ladder(0) == (0,)


# -- whole runs against the loopback server, with a scripted proposer ---------------------------------
def scripted(proposal: Callable[[int], str], program: Callable[[ChatRequest], str] = answers) -> Any:
    """A responder: the ``k``-th proposal request gets ``proposal(k)``; summaries a sentence; program
    calls ``program``."""
    count = [0]

    def respond(request: ChatRequest) -> str:
        system = str(request.messages[0]["content"])
        if system.startswith("You write instructions"):
            count[0] += 1
            return proposal(count[0])
        if "Output fields:\n- Answer" in system and "item-" in request.last_user:
            return program(request)
        return "The questions ask for the answer of numbered items; each answer is short."

    return respond


def program_calls(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if not is_proposal(r) and "Output fields:\n- Answer" in system_of(r)]


async def qa_optimize(
    server: FakeOpenAIServer, *, budget: dict[str, int] | None = None, program: object = None, **options: Any
) -> tuple[aprompt.OptimizeResult, list[aprompt.Event]]:
    events: list[aprompt.Event] = []
    async with lm_for(server) as lm:
        result = await aprompt.optimize(
            program or QAProgram(),
            qa_examples(0, 24),
            exact_match,
            valset=qa_examples(100, 112),
            lm=lm,
            budget=budget or BUDGET,
            seed=3,
            on_event=events.append,
            **options,
        )
    return result, events


@pytest.mark.anyio
async def test_a_proposal_echoing_the_scaffolding_is_never_a_candidate(fake_server: FakeOpenAIServer) -> None:
    fake_server.responder = scripted(lambda k: DEMO_ECHO)
    result, events = await qa_optimize(fake_server)
    assert result.candidates.instructions["answer"] == (ORIGINAL_INSTRUCTION,)
    assert not any("Current Instruction" in system_of(r) for r in program_calls(fake_server.chat_requests))
    dropped = [e for e in events if isinstance(e, aprompt.CandidateDropped) and e.index > 0]
    assert [e.index for e in dropped] == [1, 2, 3]
    assert all("echoes the proposer's scaffolding" in e.reason for e in dropped)
    assert {(e.predictor, e.index, e.reason) for e in dropped} <= set(result.dropped)


@pytest.mark.anyio
async def test_when_every_proposal_is_dropped_the_search_spends_its_trials_on_demos_and_says_so(
    fake_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.responder = scripted(lambda k: DEMO_ECHO)
    with caplog.at_level(logging.INFO, logger="aprompt"):
        result, events = await qa_optimize(fake_server)
    assert len(result.trials) == BUDGET["n_trials"]
    assert all(set(t.choice) == {"answer.demos"} for t in result.trials)
    assert len({t.choice["answer.demos"] for t in result.trials}) > 1, "the trials tried several demo sets"
    said = "every proposal for answer was dropped: it keeps its original instruction, and the search spends"
    assert any(said in r.getMessage() for r in caplog.records)
    note = [e for e in events if isinstance(e, aprompt.CandidateDropped) and e.index == -1]
    assert len(note) == 1 and note[0].reason.startswith(said) and note[0].reason.endswith("on demos")
    assert ("answer", -1, note[0].reason) in result.dropped


@pytest.mark.anyio
async def test_echoed_scaffolding_and_label_lines_are_cut_from_a_proposal_that_holds_an_instruction(
    fake_server: FakeOpenAIServer,
) -> None:
    def proposal(k: int) -> str:
        return (
            f"Current Instruction: Answer the question.\nProposed Instruction: Give the answer for the item, "
            f"style {k}.\nQuestion: What is the answer for item-5?\nAnswer: ans-5"
        )

    fake_server.responder = scripted(proposal)
    result, events = await qa_optimize(fake_server)
    original, *proposals = result.candidates.instructions["answer"]
    # Drawn at once: which candidate gets which reply follows the order the requests arrive in.
    assert original == ORIGINAL_INSTRUCTION
    assert sorted(proposals) == [f"Give the answer for the item, style {k}." for k in (1, 2, 3)]
    proposed = [
        e.value for e in events if isinstance(e, aprompt.CandidateProposed) and e.kind == "instruction"
    ]
    assert proposed == list(result.candidates.instructions["answer"][1:])


@pytest.mark.anyio
async def test_a_proposal_far_below_the_original_on_the_screen_is_dropped_before_the_search(
    fake_server: FakeOpenAIServer,
) -> None:
    def program(request: ChatRequest) -> str:
        return "Answer: wrong" if "hero" in system_of_request(request) else answers(request)

    fake_server.responder = scripted(
        lambda k: f"{OFF_TOPIC} Tale {k}." if k % 2 else f"Answer item {k}.", program
    )
    result, events = await qa_optimize(fake_server)
    # Replies 1 and 3 answer everything wrong; reply 2 answers like the original. (Proposals are drawn at
    # once: which candidate gets which reply follows the order the requests arrive in.)
    assert result.candidates.instructions["answer"] == (ORIGINAL_INSTRUCTION, "Answer item 2.")
    dropped = {e.index: e.reason for e in events if isinstance(e, aprompt.CandidateDropped)}
    assert len(dropped) == 2 and set(dropped) <= {1, 2, 3}
    assert all(
        reason.startswith("scores far below the original on the screen (0.00 vs")
        for reason in dropped.values()
    )
    # Each dropped proposal was run on the 5 screen examples, without demos, and never searched.
    for k in (1, 3):
        calls = [r for r in program_calls(fake_server.chat_requests) if f"Tale {k}." in system_of(r)]
        assert len(calls) == 5 and not any(m["role"] == "assistant" for r in calls for m in messages_of(r))
    planned = next(e for e in events if isinstance(e, aprompt.RunPlanned))
    assert planned.detail["screen"] == BUDGET["n_candidates"] * 5  # one predictor, one call per run


def system_of_request(request: ChatRequest) -> str:
    return str(request.messages[0]["content"])


@pytest.mark.anyio
async def test_a_resumed_run_replays_the_screen_and_the_same_candidates_with_no_new_calls(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    def program(request: ChatRequest) -> str:
        return "Answer: wrong" if "hero" in system_of_request(request) else answers(request)

    fake_server.responder = scripted(
        lambda k: f"{OFF_TOPIC} Tale {k}." if k % 2 else f"Answer item {k}.", program
    )
    first, _ = await qa_optimize(fake_server, run_dir=tmp_path / "run")
    sent = len(fake_server.chat_requests)
    again, _ = await qa_optimize(fake_server, run_dir=tmp_path / "run")
    assert len(fake_server.chat_requests) == sent
    assert again.candidates.describe() == first.candidates.describe()
    assert again.dropped == first.dropped and len(first.dropped) == 2
    assert again.best_choice == first.best_choice


# -- demo sets: diverse, of several sizes, within one bound --------------------------------------------
COLOURS = ("red", "red", "red", "green", "blue")  # a skewed label space: item N is COLOURS[N % 5]


def colour_examples(start: int, stop: int) -> list[Example]:
    return [
        Example(
            inputs={"question": f"What colour is item-{i}?"}, labels={"answer": COLOURS[i % 5]}, id=f"c{i}"
        )
        for i in range(start, stop)
    ]


def colours(request: ChatRequest) -> str:
    return f"Answer: {COLOURS[item_of(request.last_user) % 5]}"


@pytest.mark.anyio
async def test_bootstrapped_demo_sets_cover_every_label_of_a_small_label_space(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = colours
    program = QAProgram()
    async with lm_for(fake_server) as lm:
        result = await bootstrap_demo_sets(
            program, named_predictors(program), colour_examples(0, 40), exact_match,
            n_sets=8, max_bootstrapped=3, max_labeled=0, lm=lm, seed=5,
        )  # fmt: skip
    for demo_set in result.demo_sets["answer"][2:]:
        assert sorted(str(d["answer"]) for d in demo_set.demos) == ["blue", "green", "red"], demo_set


@pytest.mark.anyio
async def test_the_labeled_demo_set_covers_the_labels_before_repeating_one(
    fake_server: FakeOpenAIServer,
) -> None:
    program = QAProgram()
    async with lm_for(fake_server) as lm:
        result = await bootstrap_demo_sets(
            program, named_predictors(program), colour_examples(0, 40), exact_match,
            n_sets=2, max_bootstrapped=0, max_labeled=4, lm=lm,
        )  # fmt: skip
    labeled = [str(d["answer"]) for d in result.demo_sets["answer"][1].demos]
    # The trainset starts red, red, red: four demos hold every colour, none more than twice.
    assert len(labeled) == 4 and set(labeled) == {"blue", "green", "red"} and labeled.count("red") == 2
    assert fake_server.chat_requests == []


def intent_examples(start: int, stop: int, classes: int) -> list[Example]:
    return [
        Example(
            inputs={"question": f"What is item-{i}?"}, labels={"answer": f"intent-{i % classes}"}, id=f"i{i}"
        )
        for i in range(start, stop)
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("classes", "max_labeled", "max_bootstrapped", "expected"),
    [
        (7, 4, 4, 7),  # more classes than max_labeled: one of each, within the bound of 8
        (12, 4, 4, 4),  # more classes than the bound can show: max_labeled, each a different class
        (3, 4, 4, 4),  # fewer classes than max_labeled: max_labeled, as before
        (7, 0, 4, 0),  # no labeled demos asked for: none
    ],
)
async def test_the_labeled_set_of_a_small_label_space_shows_every_class_within_the_bound(
    fake_server: FakeOpenAIServer, classes: int, max_labeled: int, max_bootstrapped: int, expected: int
) -> None:
    program = QAProgram()
    trainset = intent_examples(0, 3 * classes, classes)
    async with lm_for(fake_server) as lm:
        result = await bootstrap_demo_sets(
            program, named_predictors(program), trainset, exact_match,
            n_sets=2, max_bootstrapped=max_bootstrapped, max_labeled=max_labeled, lm=lm,
        )  # fmt: skip
    labeled = [str(d["answer"]) for d in result.demo_sets["answer"][1].demos]
    assert len(labeled) == expected
    assert len(set(labeled)) == min(expected, classes), "each class before any repeat"
    assert fake_server.chat_requests == []


@pytest.mark.anyio
async def test_a_run_starts_from_the_same_labeled_set_the_bootstrap_builds(
    fake_server: FakeOpenAIServer,
) -> None:
    """The reference (the instruction as written with the labeled set) is known before the bootstrap
    ends; it must show the very demos of the set the search later calls by that index."""
    fake_server.responder = scripted(
        lambda k: f"Answer item {k}.", lambda request: f"Answer: intent-{item_of(request.last_user) % 7}"
    )
    async with lm_for(fake_server) as lm:
        result = await aprompt.optimize(
            QAProgram(), intent_examples(0, 40, 7), exact_match, valset=intent_examples(100, 112, 7),
            lm=lm, budget={**BUDGET, "n_candidates": 4}, seed=3,
        )  # fmt: skip
    labeled = result.candidates.demo_sets["answer"][1]
    assert labeled.bootstrapped == 0
    assert sorted(str(d["answer"]) for d in labeled.demos) == [f"intent-{k}" for k in range(7)]
    shown = {
        tuple(str(m["content"]) for m in (request.body or {})["messages"] if m["role"] == "assistant")
        for request in fake_server.chat_requests
    }
    assert tuple(f"Answer: {d['answer']}" for d in labeled.demos) in shown, "the reference showed them"


@pytest.mark.anyio
async def test_demo_sets_hold_distinct_outputs_when_labels_are_free_text(
    fake_server: FakeOpenAIServer,
) -> None:
    # 40 answers, each given by two items: not a label space, so no set repeats an answer.
    def twins(start: int, stop: int) -> list[Example]:
        return [
            Example(inputs={"question": f"What is item-{i}?"}, labels={"answer": f"ans-{i // 2}"}, id=f"t{i}")
            for i in range(start, stop)
        ]

    fake_server.responder = lambda request: f"Answer: ans-{item_of(request.last_user) // 2}"
    program = QAProgram()
    async with lm_for(fake_server) as lm:
        result = await bootstrap_demo_sets(
            program, named_predictors(program), twins(0, 80), exact_match,
            n_sets=12, max_bootstrapped=4, max_labeled=4, lm=lm, seed=2,
        )  # fmt: skip
    sizes = [len(s.demos) for s in result.demo_sets["answer"]]
    assert sizes == [0, 4, *([8] * 10)], "the labeled set holds max_labeled, the others the bound"
    for demo_set in result.demo_sets["answer"][1:]:
        outputs = [str(d["answer"]) for d in demo_set.demos]
        assert len(set(outputs)) == len(outputs), outputs


@pytest.mark.anyio
async def test_a_run_searches_demo_sets_of_several_sizes_none_above_the_bound(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = colours
    budget = {**BUDGET, "n_candidates": 6, "max_bootstrapped_demos": 3, "max_labeled_demos": 1}
    events: list[aprompt.Event] = []
    async with lm_for(fake_server) as lm:
        result = await aprompt.optimize(
            QAProgram(), colour_examples(0, 40), exact_match, valset=colour_examples(100, 112), lm=lm,
            strategy="bayesian_bootstrap", budget=budget, on_event=events.append,
        )  # fmt: skip
    sets = result.candidates.demo_sets["answer"]
    # Set 0: the program's own (none); 1: labeled only, one of each of the 3 colours (more classes than
    # max_labeled_demos); then sizes 4, 2, 1, 4 from the bound 3 + 1 = 4.
    assert [len(s.demos) for s in sets] == [0, 3, 4, 2, 1, 4]
    assert sorted(str(d["answer"]) for d in sets[1].demos) == ["blue", "green", "red"]
    assert all(s.bootstrapped <= 3 and len(s.demos) - s.bootstrapped <= 1 for s in sets[2:])
    assert aprompt.Budget(**budget).max_demos == 4


@pytest.mark.anyio
async def test_a_program_with_its_own_demos_can_still_be_searched_without_any(
    fake_server: FakeOpenAIServer,
) -> None:
    fake_server.responder = colours
    program = QAProgram()
    program.answer.demos = [aprompt.Demo({"question": "What colour is item-3?", "answer": "green"})]
    async with lm_for(fake_server) as lm:
        result = await aprompt.optimize(
            program, colour_examples(0, 40), exact_match, valset=colour_examples(100, 112), lm=lm,
            strategy="bayesian_bootstrap", budget=BUDGET,
        )  # fmt: skip
    sets = result.candidates.demo_sets["answer"]
    assert [len(s.demos) for s in sets[:2]] == [1, 0]


@pytest.mark.anyio
async def test_a_screen_skipped_for_the_limit_stays_skipped_when_the_run_resumes_with_more(
    fake_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    def program(request: ChatRequest) -> str:
        return "Answer: wrong" if "hero" in system_of_request(request) else answers(request)

    fake_server.responder = scripted(
        lambda k: f"{OFF_TOPIC} Tale {k}." if k % 2 else f"Answer item {k}.", program
    )
    # 57 calls pay for the baseline, the labeled-demos reference and a trial, not for the screen too: the
    # run goes on unscreened.
    stopped, _ = await qa_optimize(
        fake_server, run_dir=tmp_path / "run", limits=aprompt.Limits(max_lm_calls=57)
    )
    assert stopped.stopped_by == "max_lm_calls" and stopped.trials and not stopped.dropped
    assert len(stopped.candidates.instructions["answer"]) == 4
    # Not the uninterrupted run's result (that run screens), and it says so.
    with pytest.warns(aprompt.InexactResumeWarning, match=r"raised: max_lm_calls=None \(was 57\)"):
        resumed, _ = await qa_optimize(fake_server, run_dir=tmp_path / "run")
    assert resumed.stopped_by is None and len(resumed.trials) == BUDGET["n_trials"]
    assert resumed.candidates.describe() == stopped.candidates.describe()
    assert [t.choice for t in resumed.trials[: len(stopped.trials)]] == [t.choice for t in stopped.trials]
