"""Backends without servers: host kinds in the configuration, model names both ways, a
request as an OpenAI-compatible engine takes it, and its server-sent events read back."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from actors.backends.names import ModelNames
from actors.backends.openai import Sse
from actors.backends.openai_map import chat_body, completion_body, embedding_body
from bus.config import ConfigError, HostConfig, load_config
from bus.errors import BadRequest, UpstreamError
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Message, Options
from schemas.requests import ToolCall, ToolCallFunction

# -- configuration ------------------------------------------------------------------------


def test_hosts_come_from_tables_and_urls_with_their_kinds(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'ollama_hosts = ["http://a:11434/", "openai+http://b:8080"]\n'
        '[[hosts]]\nurl = "http://c:8000"\nkind = "openai"\nslots = 8\n'
        '[executor.host_slots]\n"http://a:11434" = 2\n'
    )
    assert load_config(f, env={}).host_list() == [
        HostConfig(url="http://c:8000", kind="openai", slots=8),
        HostConfig(url="http://a:11434", kind="ollama", slots=2),
        HostConfig(url="http://b:8080", kind="openai", slots=None),
    ]


def test_without_hosts_the_fleet_is_the_local_ollama() -> None:
    assert load_config(None, env={}).host_list() == [
        HostConfig(url="http://127.0.0.1:11434", kind="ollama")
    ]


def test_tables_alone_replace_the_default_host(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[hosts]]\nurl = "http://c:8000"\nkind = "openai"\n')
    assert [h.url for h in load_config(f, env={}).host_list()] == ["http://c:8000"]


def test_ollama_hosts_in_the_environment_replace_the_files_hosts(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[hosts]]\nurl = "http://c:8000"\nkind = "openai"\n')
    config = load_config(f, env={"OLLAMA_HOSTS": "openai+https://d:1,http://e:2"})
    assert [(h.kind, h.url) for h in config.host_list()] == [
        ("openai", "https://d:1"),
        ("ollama", "http://e:2"),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param('[[hosts]]\nurl = "http://c:8000"\nkind = "vllm"\n', "kind", id="kind"),
        pytest.param('[[hosts]]\nurl = "c:8000"\n', "hosts[0].url", id="url"),
        pytest.param('ollama_hosts = ["openai+gpu:80"]\n', "ollama_hosts[0]", id="prefixed"),
        pytest.param('ollama_hosts = ["vllm+http://gpu:80"]\n', "names no kind", id="scheme"),
        pytest.param(
            'ollama_hosts = ["http://a:1"]\n[[hosts]]\nurl = "http://a:1/"\n',
            "named twice",
            id="twice",
        ),
        pytest.param('[models.aliases]\n"x.gguf" = "primary"\n', "is a role", id="alias-role"),
        pytest.param('[models.aliases]\n"x.gguf" = " "\n', "needs both", id="alias-empty"),
        pytest.param('[[hosts]]\nurl = "http://a:1"\nslots = 0\n', "slots", id="slots"),
    ],
)
def test_a_bad_host_is_a_clear_error(tmp_path: Path, text: str, says: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        load_config(f, env={})


def test_model_names_follow_aliases_both_ways() -> None:
    names = ModelNames({"tiny-q4.gguf": "tiny"})
    assert names.learn(["tiny-q4.gguf", "other.gguf", "qwen2.5:7b"]) == [
        "tiny:latest",
        "other.gguf:latest",
        "qwen2.5:7b",
    ]
    assert names.own("tiny:latest") == "tiny-q4.gguf"
    assert names.own("other.gguf:latest") == "other.gguf"
    assert names.own("never-listed:latest") == "never-listed:latest"


# -- requests as an OpenAI-compatible engine takes them -----------------------------------


def _decoded(body: bytes) -> dict[str, object]:
    value = msgspec.json.decode(body)
    assert isinstance(value, dict)
    return value


def test_a_chat_maps_options_format_images_and_tools() -> None:
    request = ChatRequest(
        model="tiny:latest",
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="look", images=["iVBORw0KGgo="]),
            Message(
                role="assistant",
                tool_calls=[ToolCall(function=ToolCallFunction("weather", {"city": "Bonn"}))],
            ),
            Message(role="tool", content="12 C", tool_name="weather"),
        ],
        options=Options(
            num_predict=7, temperature=0.0, top_p=0.5, seed=3, stop=["\n"], top_k=4, num_ctx=4096
        ),
        format={"type": "object"},
        tools=[{"type": "function", "function": {"name": "weather"}}],
    )
    body = _decoded(chat_body(request, "tiny-q4.gguf"))
    assert body["model"] == "tiny-q4.gguf"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (7, 0.0, 0.5)
    assert (body["seed"], body["stop"], body["top_k"]) == (3, ["\n"], 4)
    assert "num_ctx" not in body and "options" not in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    assert body["tools"] == request.tools
    messages = body["messages"]
    assert isinstance(messages, list)
    assert messages[1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    call = messages[2]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Bonn"}'}
    assert messages[3] == {"role": "tool", "content": "12 C", "tool_call_id": call["id"]}


def test_json_format_and_unlimited_tokens() -> None:
    request = ChatRequest(model="m:1", messages=[Message(role="user", content="hi")],
                          format="json", options=Options(num_predict=-1))  # fmt: skip
    body = _decoded(chat_body(request, "m"))
    assert body["response_format"] == {"type": "json_object"}
    assert "max_tokens" not in body


def test_a_generate_is_a_raw_completion() -> None:
    request = GenerateRequest(model="m:1", prompt="Once", options=Options(num_predict=3))
    body = _decoded(completion_body(request, "m"))
    assert (body["prompt"], body["max_tokens"], body["stream"]) == ("Once", 3, True)


@pytest.mark.parametrize("field", ["suffix", "system", "images"])
def test_what_completions_cannot_take_is_a_bad_request(field: str) -> None:
    value: object = ["iVBOR"] if field == "images" else "x"
    request = GenerateRequest(model="m:1", prompt="p", **{field: value})
    with pytest.raises(BadRequest, match=field):
        completion_body(request, "m")


def test_an_embedding_request() -> None:
    body = _decoded(embedding_body(EmbedRequest(model="e:1", input=["a", "b"], dimensions=8), "e"))
    assert body == {"model": "e", "input": ["a", "b"], "dimensions": 8}


# -- server-sent events read back ----------------------------------------------------------


def _events(*payloads: str) -> bytes:
    return b"".join(f"data: {p}\n\n".encode() for p in payloads)


def test_a_streamed_chat_becomes_lines_with_the_engines_figures() -> None:
    sse = Sse(chat=True)
    head = '{"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}'
    data = _events(
        head,
        '{"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
        '{"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"lo"}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}',
        '{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8},'
        '"timings":{"prompt_n":5,"prompt_ms":1.5,"predicted_n":3,"predicted_ms":2.25}}',
        "[DONE]",
    )
    # Split anywhere: events cut across reads are read whole.
    lines = sse.feed(data[:37]) + sse.feed(data[37:101]) + sse.feed(data[101:])
    assert sse.done
    texts = [(ln.message.content, ln.message.thinking) for ln in lines if ln.message]
    assert texts[:3] == [("Hel", None), ("", "hm"), ("lo", None)]
    last = lines[-1]
    assert last.done and last.done_reason == "length"
    assert (last.prompt_eval_count, last.eval_count) == (5, 3)
    assert (last.prompt_eval_duration, last.eval_duration) == (1_500_000, 2_250_000)
    assert last.total_duration > 0


def test_tool_call_fragments_become_one_call() -> None:
    sse = Sse(chat=True)
    lines = sse.feed(
        _events(
            '{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function",'
            '"function":{"name":"weather","arguments":""}}]}}]}',
            '{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]}}]}',
            '{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\\":1}"}}]}}]}',
            '{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}',
            "[DONE]",
        )
    )
    calls = [c for ln in lines if ln.message for c in ln.message.tool_calls or ()]
    assert calls == [ToolCall(function=ToolCallFunction("weather", {"city": 1}))]
    assert lines[-1].done and lines[-1].done_reason == "stop"


def test_without_usage_each_event_counts_one_token() -> None:
    sse = Sse(chat=False)
    lines = sse.feed(_events('{"choices":[{"text":"a"}]}', '{"choices":[{"text":"b"}]}', "[DONE]"))
    assert [ln.response for ln in lines[:-1]] == ["a", "b"]
    assert lines[-1].eval_count == 2 and lines[-1].message is None


def test_an_error_event_fails_the_stream() -> None:
    sse = Sse(chat=True)
    with pytest.raises(UpstreamError, match="slot crashed"):
        sse.feed(_events('{"error":{"code":500,"message":"slot crashed","type":"server_error"}}'))


def test_tool_arguments_that_are_no_object_fail_the_stream() -> None:
    sse = Sse(chat=True)
    data = _events(
        '{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"[1"}}]}}]}',
        "[DONE]",
    )
    with pytest.raises(UpstreamError, match="no JSON object"):
        sse.feed(data)
