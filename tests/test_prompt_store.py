"""Prompt templates: versions, rendering without surprises, seeds, usage, requests."""

from __future__ import annotations

import asyncio

import pytest

from actors.prompts import SEEDS, MissingVariables, render, variables_of
from actors.router.templating import template_options
from actors.store import EmbeddedPostgres
from bus.client import Client
from bus.errors import BadRequest, Unavailable
from schemas import Options
from tests.helpers import eventually, query, refuse_connections

MODEL = "llama3.2:3b"
MODELS = [MODEL, "qwen2.5:7b"]
STORES = ("router", "executor", "recorder", "prompts")


def test_render_fills_each_placeholder_once_and_literally() -> None:
    """Spaces inside braces are fine; values are never re-expanded nor read as patterns;
    what is not a placeholder stays; numbers and booleans are written plainly."""
    text, unused = render(
        "Hi {{ name }}, {{name}}! {{ not closed, {{}} {{1x}} $1 {{count}} {{flag}}",
        {"name": "{{count}} \\1 $&", "count": 3, "flag": False, "extra": "x"},
    )
    assert text == "Hi {{count}} \\1 $&, {{count}} \\1 $&! {{ not closed, {{}} {{1x}} $1 3 false"
    assert unused == ["extra"]
    assert variables_of("{{b}} {{a}} {{ b }}") == ["b", "a"]


def test_a_missing_variable_is_named() -> None:
    with pytest.raises(MissingVariables, match="missing template variables: phase, area"):
        render("{{phase}} {{budget}} {{area}}", {"budget": 1})


@pytest.fixture
async def store(database_url: str, sim_factory, stack_factory):
    sim = await sim_factory(models=MODELS)
    return await stack_factory([sim.url], actors=STORES, database={"url": database_url})


async def test_versions_get_list_delete(store, client: Client) -> None:
    """Each put is a new version; get gives the latest or a named one; delete one or all."""
    first = await client.put_prompt("greet", "Hello {{who}}", parameters={"temperature": 0.1})
    second = await client.put_prompt("greet", "Hi {{ who }} from {{place}}")
    assert (first.version, second.version) == (1, 2)
    assert second.variables == ["who", "place"]
    assert (await client.get_prompt("greet")).template == "Hi {{ who }} from {{place}}"
    assert (await client.get_prompt("greet", 1)).parameters == {"temperature": 0.1}
    names = {p.name: p.version for p in await client.list_prompts()}
    assert names["greet"] == 2 and {s[0] for s in SEEDS} <= set(names)
    assert await client.delete_prompt("greet", 2) == 1
    assert (await client.get_prompt("greet")).version == 1
    assert await client.delete_prompt("greet") == 1
    with pytest.raises(BadRequest, match="no prompt template named 'greet'"):
        await client.get_prompt("greet")


async def test_concurrent_puts_get_distinct_versions(store, client: Client) -> None:
    puts = await asyncio.gather(*(client.put_prompt("busy", f"v{i}") for i in range(20)))
    assert sorted(p.version for p in puts) == list(range(1, 21))


async def test_bad_requests_are_typed(store, client: Client) -> None:
    with pytest.raises(BadRequest, match="missing template variables: phase"):
        await client.render_prompt("hoai_analysis_template", {"projectType": "x"})
    with pytest.raises(BadRequest, match="invalid PromptPut"):
        await client.put_prompt("bad name!", "x")
    reply = await client.nc.request(client.subjects.prompts("get"), b"{not json", timeout=5)
    assert b'"code":"bad_request"' in reply.data
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "400"


async def test_seeds_arrive_once_and_never_overwrite(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """A second start adds nothing, and a user's newer version stays the latest."""
    sim = await sim_factory(models=MODELS)
    sections = {"actors": ("prompts",), "database": {"url": database_url}}
    stack = await stack_factory([sim.url], **sections)
    await client.put_prompt("safety_check_template", "my own {{site}}")
    await stack.stop(grace=1.0)
    await stack_factory([sim.url], **sections)
    seeded = await client.get_prompt("safety_check_template", 1)
    assert seeded.parameters == {"temperature": 0.2} and "{{hazards}}" in seeded.template
    assert (await client.get_prompt("safety_check_template")).template == "my own {{site}}"
    hoai = await client.get_prompt("hoai_analysis_template")
    assert hoai.version == 1 and hoai.variables == ["phase", "projectType", "budget", "area"]


async def test_a_request_naming_a_template_is_rendered_and_counted(store, client: Client) -> None:
    """The router renders the template into the prompt, its parameters apply unless the
    request sets them, and usage (uses, success rate, latency) follows the requests."""
    variables = {"phase": 3, "projectType": "school", "budget": 2_000_000, "area": 1200}
    result = await client.generate(
        MODEL, prompt_template="hoai_analysis_template", variables=variables,
        options={"num_predict": 5, "temperature": 0},
    )  # fmt: skip
    assert result.response and result.eval_count == 5
    await client.generate(
        MODEL, prompt_template="hoai_analysis_template", variables=variables,
        options={"num_predict": 5},
    )  # fmt: skip
    with pytest.raises(BadRequest, match="missing template variables: area"):
        await client.generate(
            MODEL, prompt_template="hoai_analysis_template", variables={"phase": 1,
            "projectType": "x", "budget": 1},
        )  # fmt: skip

    async def counted() -> bool:
        usage = (await client.get_prompt("hoai_analysis_template")).usage
        return usage.uses == 2 and usage.success_rate == 1.0 and (usage.avg_latency_ms or 0) > 0

    await eventually(counted)


def test_template_parameters_apply_unless_the_request_sets_them() -> None:
    merged = template_options({"temperature": 0.3, "top_k": 20}, Options(temperature=0))
    assert merged == Options(temperature=0, top_k=20)
    assert template_options({"temperature": 0.3}, None) == Options(temperature=0.3)
    assert template_options({}, None) is None
    with pytest.raises(BadRequest, match="not valid options"):
        template_options({"temperature": "hot"}, None)


async def test_two_prompt_store_replicas_store_each_put_once(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """Replicas share the subjects as a queue group: ten puts, ten versions."""
    sim = await sim_factory(models=MODELS)
    for _ in range(2):
        await stack_factory([sim.url], actors=("prompts",), database={"url": database_url})
    puts = [await client.put_prompt("twice", f"v{i}") for i in range(10)]
    assert [p.version for p in puts] == list(range(1, 11))


async def test_a_template_it_knows_renders_while_postgres_is_unreachable(
    store, client: Client, postgres: EmbeddedPostgres, database_url: str, prefix: str
) -> None:
    """With its database unreachable, the store renders what it knew (the seeds, read at
    start; the versions it stored, and the latest of them), so a request naming one is
    served; a template another replica stored and it never read is `unavailable`, and
    so is every other verb."""
    await client.put_prompt("outage", "Tell {{who}}", parameters={"temperature": 0})
    await client.put_prompt("outage", "Ask {{who}}")
    await query(database_url, "INSERT INTO ollama_prompts VALUES ('elsewhere', 1, '{{x}}')")
    await refuse_connections(postgres.url(), prefix, True)
    try:
        assert (await client.render_prompt("outage", {"who": "me"})).text == "Ask me"
        assert (await client.render_prompt("outage", {"who": "me"}, version=1)).text == "Tell me"
        seeded = await client.render_prompt(
            "safety_check_template",
            {"conditions": "wet", "workers": 3, "equipment": "crane", "hazards": "none"},
        )
        assert seeded.version == 1 and "wet" in seeded.text
        result = await client.generate(
            MODEL, prompt_template="outage", variables={"who": "you"}, options={"num_predict": 2}
        )
        assert result.done
        with pytest.raises(Unavailable):
            await client.render_prompt("elsewhere", {"x": 1})
        with pytest.raises(Unavailable):
            await client.get_prompt("outage")
    finally:
        await refuse_connections(postgres.url(), prefix, False)
    assert (await client.render_prompt("elsewhere", {"x": 1})).text == "1"
