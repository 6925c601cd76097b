"""A chain's plan, without a network: what a model answers becomes a clean graph."""

from __future__ import annotations

import json

import pytest

from actors.reasoning.plan import fit, plan_schema, read_plan, ready
from schemas.reasoning import StepKind

QUERY = "How many windows?"


def _plan(steps: list[dict[str, object]]) -> str:
    return json.dumps({"steps": steps})


def test_a_json_plan_keeps_ids_dependencies_and_kinds() -> None:
    """The JSON asked for is taken as it is, in an order that respects dependencies."""
    answer = _plan([
        {"id": 2, "text": "multiply", "depends_on": [1], "kind": "mathematical"},
        {"id": 1, "text": "count floors", "depends_on": [], "kind": "general"},
    ])  # fmt: skip
    plan = read_plan(answer, QUERY, 8)
    assert [(s.step_id, s.depends_on, s.kind) for s in plan.steps] == [
        ("1", [], StepKind.GENERAL), ("2", ["1"], StepKind.MATHEMATICAL)
    ]  # fmt: skip
    assert plan.warnings == []


@pytest.mark.parametrize(
    ("answer", "texts"),
    [
        pytest.param("1. count floors\n2. multiply\n", ["count floors", "multiply"], id="numbered-dot"),
        pytest.param("1) count floors\n2) multiply", ["count floors", "multiply"], id="numbered-paren"),
        pytest.param("Step 1: count floors\nStep 2: multiply", ["count floors", "multiply"], id="step-colon"),
        pytest.param("- count floors\n- multiply", ["count floors", "multiply"], id="dash"),
        pytest.param("* count floors\n* multiply", ["count floors", "multiply"], id="star"),
        pytest.param("• count floors\n• multiply", ["count floors", "multiply"], id="bullet"),
        pytest.param("Here is my plan:\n  1. count floors\nthen\n  2. multiply\nDone.", ["count floors", "multiply"], id="prose-around"),
        pytest.param('```json\n{"steps": [{"id": 1, "text": "fenced"}]}\n```', ["fenced"], id="fenced-json"),
        pytest.param('{"steps": "no list"}\n1. from the text', ["from the text"], id="json-unusable"),
    ],
)  # fmt: skip
def test_a_plan_in_text_is_read_from_its_lines(answer: str, texts: list[str]) -> None:
    """Numbered or bulleted lines become the steps when the JSON is missing or unusable."""
    assert [s.text for s in read_plan(answer, QUERY, 8).steps] == texts


@pytest.mark.parametrize(
    "answer", ["", "I cannot help with that.", "{}", '{"steps": []}', '{"steps": [{"id": 1}]}']
)
def test_nothing_usable_makes_the_query_the_only_step(answer: str) -> None:
    """No steps at all: one step, the query itself, with a warning."""
    plan = read_plan(answer, QUERY, 8)
    assert [s.text for s in plan.steps] == [QUERY] and plan.warnings


def test_unknown_and_cyclic_dependencies_are_dropped_with_a_warning() -> None:
    """A dependency on a step that does not exist, on itself, or in a cycle goes; the plan
    stays solvable (every step after what it needs)."""
    answer = _plan([
        {"id": 1, "text": "a", "depends_on": [3, 9]},
        {"id": 2, "text": "b", "depends_on": [1, 2]},
        {"id": 3, "text": "c", "depends_on": [2]},
    ])  # fmt: skip
    plan = read_plan(answer, QUERY, 8)
    placed: set[str] = set()
    for step in plan.steps:
        assert set(step.depends_on) <= placed
        placed.add(step.step_id)
    assert len(plan.warnings) >= 2
    assert any("unknown" in w for w in plan.warnings) and any("cyclic" in w for w in plan.warnings)


def test_duplicate_ids_are_renamed_and_extra_steps_cut() -> None:
    """Two steps with one id are told apart; a plan over max_steps keeps the first ones."""
    answer = _plan([{"id": 1, "text": t} for t in "abcde"])
    plan = read_plan(answer, QUERY, 3)
    assert len(plan.steps) == 3 and len({s.step_id for s in plan.steps}) == 3
    assert any("kept the first 3" in w for w in plan.warnings)


def test_ready_steps_are_those_whose_dependencies_are_done() -> None:
    """A diamond: A first, then B and C together, then D."""
    plan = read_plan(
        _plan([
            {"id": "A", "text": "a"}, {"id": "B", "text": "b", "depends_on": ["A"]},
            {"id": "C", "text": "c", "depends_on": ["A"]},
            {"id": "D", "text": "d", "depends_on": ["B", "C"]},
        ]),
        QUERY, 8,
    )  # fmt: skip
    ids = lambda steps: [s.step_id for s in steps]  # noqa: E731
    assert ids(ready(plan.steps, set(), set())) == ["A"]
    assert ids(ready(plan.steps, {"A"}, {"A"})) == ["B", "C"]
    assert ids(ready(plan.steps, {"A", "B"}, {"A", "B", "C"})) == []
    assert ids(ready(plan.steps, {"A", "B", "C"}, {"A", "B", "C"})) == ["D"]


def test_fit_keeps_short_texts_whole_and_trims_long_ones_to_the_budget() -> None:
    """Within the budget nothing changes; over it the long texts share what is left."""
    assert fit(["ab", "cd"], 10) == ["ab", "cd"]
    short, long_a, long_b = "x" * 10, "y" * 400, "z" * 4000
    out = fit([short, long_a, long_b], 100)  # 400 characters in all
    assert out[0] == short and sum(len(t) for t in out) <= 400
    assert out[1].endswith("[...]") and out[2].endswith("[...]")


def test_the_schema_asks_for_three_steps_at_most_max() -> None:
    """What the decomposition is asked to follow: ids within max_steps, a kind each."""
    schema = plan_schema(5)
    steps = schema["properties"]["steps"]
    assert (steps["minItems"], steps["maxItems"]) == (3, 5)
    assert steps["items"]["properties"]["kind"]["enum"] == ["general", "mathematical"]
