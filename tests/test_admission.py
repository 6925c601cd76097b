"""Admission policy without a network: validation and model choice."""

from __future__ import annotations

import pytest

from actors.router.admission import resolve_model, validate
from bus.config import RouterConfig
from bus.errors import BadRequest
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Message, Options

ROLES = {"primary": "qwen2.5:7b", "fast": "llama3.2:3b"}


@pytest.mark.parametrize(
    ("request_", "model"),
    [
        pytest.param(GenerateRequest(model="org/m:7b", prompt="x"), "org/m:7b", id="explicit"),
        pytest.param(
            GenerateRequest(model="primary", prompt="x"), "qwen2.5:7b", id="role-as-model"
        ),
        pytest.param(GenerateRequest(role="fast", prompt="x"), "llama3.2:3b", id="role-field"),
        pytest.param(
            GenerateRequest(model="x", role="fast", prompt="x"), "llama3.2:3b", id="role-wins"
        ),
        pytest.param(
            GenerateRequest(model="llama3", prompt="x"), "llama3:latest", id="untagged-is-latest"
        ),
        pytest.param(
            GenerateRequest(model="host:5000/org/m", prompt="x"),
            "host:5000/org/m:latest",
            id="registry-port",
        ),
    ],
)
def test_resolve_model(request_: GenerateRequest, model: str) -> None:
    """A role alias, a model field naming a role, or a model name picks the model."""
    assert resolve_model(request_, ROLES) == model


def test_resolve_model_leaves_the_choice_open_or_refuses_an_unknown_role() -> None:
    """No model and no role: None (the router chooses); an unknown role lists the roles."""
    assert resolve_model(GenerateRequest(prompt="x"), ROLES) is None
    with pytest.raises(BadRequest, match="fast, primary"):
        resolve_model(GenerateRequest(role="wizard", prompt="x"), ROLES)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(
            GenerateRequest(model="m", prompt="x", options=Options(temperature=0.0)),
            id="temperature-zero",
        ),
        pytest.param(GenerateRequest(model="m", prompt="", images=["aGk="]), id="image-only"),
        pytest.param(
            ChatRequest(model="m", messages=[Message(role="tool", content="42")]), id="tool-message"
        ),
        pytest.param(EmbedRequest(model="m", input=["a", "b"]), id="embed-batch"),
        pytest.param(
            GenerateRequest(model="m", prompt="x", options=Options(num_predict=-1)), id="until-stop"
        ),
    ],
)
def test_valid_requests_pass(request_) -> None:
    """Valid edge cases are admitted (temperature 0 is a value, not 'unset')."""
    validate(request_, RouterConfig())


def test_num_predict_over_the_limit_is_refused() -> None:
    """The limit is configurable and named in the message."""
    with pytest.raises(BadRequest, match="over the limit of 100"):
        validate(
            GenerateRequest(model="m", prompt="x", options=Options(num_predict=101)),
            RouterConfig(max_num_predict=100),
        )
