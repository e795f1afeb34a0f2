"""Every public aprompt error survives pickling whole (an executor's worker sends its errors back so)."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

import aprompt
from aprompt.testing.fake_openai import FakeOpenAIServer, Fault
from tests.conftest import TEST_API_KEY

pytestmark = pytest.mark.anyio

#: A value for each keyword an error's constructor takes.
KEYWORDS: dict[str, Any] = {
    "status_code": 503,
    "server_message": "overloaded",
    "endpoint": "http://127.0.0.1:9/v1",
    "retry_after": 2.5,
    "raw_text": "Answer: maybe",
    "missing": ("answer",),
    "limit": "max_lm_calls",
    "path": "/tmp/run/journal.sqlite",
    "errors": {"q1": "ValueError: bad"},
    "waited": 30.0,
    "finish_reason": "length",
    "text": "cut sho",
}

ERRORS = sorted(
    (
        value
        for value in vars(aprompt).values()
        if inspect.isclass(value) and issubclass(value, aprompt.APromptError)
    ),
    key=lambda cls: cls.__name__,
)


def built(cls: type[aprompt.APromptError]) -> aprompt.APromptError:
    """``cls`` with a message and every keyword its constructor names set to a value of its own."""
    names = [
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return cls(f"{cls.__name__} happened", **{name: KEYWORDS[name] for name in names})


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_an_error_pickles_with_its_message_and_attributes(cls: type[aprompt.APromptError]) -> None:
    error = built(cls)
    shipped = pickle.loads(pickle.dumps(error))
    assert type(shipped) is cls
    assert shipped.args == error.args
    assert vars(shipped) == vars(error)
    assert str(shipped) == str(error)


def test_every_keyword_only_constructor_is_covered() -> None:
    # The classes with required keywords are the ones the default pickling could not rebuild.
    required = {
        cls.__name__
        for cls in ERRORS
        if any(
            p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
            for p in inspect.signature(cls.__init__).parameters.values()
        )
    }
    assert {"LMStatusError", "ServerError", "AuthenticationError", "ParseError", "RunLimitError"} <= required


async def test_errors_raised_by_a_real_client_pickle_whole() -> None:
    hello = [{"role": "user", "content": "hi"}]
    errors: list[aprompt.LMError] = []
    async with FakeOpenAIServer(api_key=TEST_API_KEY) as server:
        server.queue_faults(Fault.http_status(503, retry_after="0"))
        async with aprompt.OpenAICompatibleLM(
            "m", server.base_url, api_key=TEST_API_KEY, max_retries=0
        ) as lm:
            with pytest.raises(aprompt.ServerError) as server_error:
                await lm.chat(hello)
            errors.append(server_error.value)
        async with aprompt.OpenAICompatibleLM("m", server.base_url, api_key=TEST_API_KEY + "x") as lm:
            with pytest.raises(aprompt.AuthenticationError) as refused:
                await lm.chat(hello)
            errors.append(refused.value)
    for error in errors:
        data = pickle.dumps(error)
        shipped = pickle.loads(data)
        assert (type(shipped), str(shipped), vars(shipped)) == (type(error), str(error), vars(error))
        assert TEST_API_KEY.encode() not in data
    assert [e.status_code for e in errors] == [503, 401]
