"""What a moved answer asks its next host: the request that goes on after the text so far."""

from __future__ import annotations

import pytest

from actors.executor.emit import SoFar
from actors.executor.resume import continued, unmovable
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Message, Options

SO_FAR = SoFar(seq=3, text="The sky is", thinking="", tokens=3)


def test_a_chat_goes_on_from_the_text_so_far_as_the_assistant_s_message() -> None:
    asked = ChatRequest(model="m", messages=[Message(role="user", content="Why?")])
    request = continued(asked, SO_FAR, raw_completions=False)
    assert isinstance(request, ChatRequest)
    assert request.messages == [*asked.messages, Message(role="assistant", content="The sky is")]


def test_a_raw_completion_goes_on_from_the_prompt_plus_the_text_so_far() -> None:
    asked = GenerateRequest(model="m", prompt="Why? ")
    for request in (
        continued(asked, SO_FAR, raw_completions=True),
        continued(
            GenerateRequest(model="m", prompt="Why? ", raw=True), SO_FAR, raw_completions=False
        ),
    ):
        assert isinstance(request, GenerateRequest) and request.prompt == "Why? The sky is"


def test_a_templated_generate_goes_on_as_the_chat_turn_its_template_renders() -> None:
    asked = GenerateRequest(
        model="m", prompt="Why?", system="Be brief.", images=["aW1n"], format="json", think=True
    )
    request = continued(asked, SO_FAR, raw_completions=False)
    assert isinstance(request, ChatRequest)
    assert [m.role for m in request.messages] == ["system", "user", "assistant"]
    assert request.messages[0].content == "Be brief."
    assert request.messages[1] == Message(role="user", content="Why?", images=["aW1n"])
    assert request.messages[2].content == "The sky is"
    assert (request.format, request.think, request.stream) == ("json", True, True)


def test_num_predict_counts_the_tokens_already_sent() -> None:
    asked = ChatRequest(model="m", options=Options(num_predict=10, temperature=0))
    request = continued(asked, SO_FAR, raw_completions=False)
    assert request is not None and request.options == Options(num_predict=7, temperature=0)
    whole = ChatRequest(model="m", options=Options(num_predict=3))
    assert continued(whole, SO_FAR, raw_completions=False) is None  # nothing left


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ChatRequest(model="m", migrate=False), "opted out"),
        (GenerateRequest(model="m", suffix="end"), "suffix"),
        (GenerateRequest(model="m", template="{{ .Prompt }}"), "template"),
        (EmbedRequest(model="m"), "not streamed"),
    ],
)
def test_what_cannot_move_says_why(request_, reason: str) -> None:
    assert reason in (unmovable(request_) or "")


def test_chats_and_plain_generates_can_move() -> None:
    assert unmovable(ChatRequest(model="m")) is None
    assert unmovable(GenerateRequest(model="m", prompt="p")) is None
