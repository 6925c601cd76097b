"""A chain's plan, apart from I/O: the schema asked for, reading what the model answered
(JSON, or numbered or bulleted text, or nothing usable), a clean graph of steps, and
fitting step answers into a prompt."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from schemas.reasoning import StepKind

__all__ = ["Plan", "PlanStep", "fit", "plan_schema", "read_plan", "ready"]

# Lines that start a step in a text answer: `1.`, `1)`, `Step 1:`, `-`, `*`, `•`.
_ITEM = re.compile(r"^\s*(?:\d+\s*[.)]|step\s+\d+\s*[:.)-]|[-*•])\s+(?P<text>\S.*)$", re.I)
# A JSON object inside prose or a ```json fence.
_OBJECT = re.compile(r"\{.*\}", re.S)
# About four characters of text to a token.
CHARS_PER_TOKEN = 4
_TRIMMED = " [...]"


@dataclass
class PlanStep:
    """One step of a plan: an id, what to do, the steps it needs, its kind."""

    step_id: str
    text: str
    depends_on: list[str] = field(default_factory=list)
    kind: StepKind = StepKind.GENERAL


@dataclass
class Plan:
    """The steps in an order that respects their dependencies, and what was corrected."""

    steps: list[PlanStep]
    warnings: list[str] = field(default_factory=list)


def plan_schema(max_steps: int) -> dict[str, Any]:
    """The JSON schema the decomposition is asked to follow (Ollama's `format`)."""
    ids = {"type": "integer", "minimum": 1, "maximum": max_steps}
    step = {
        "type": "object",
        "properties": {
            "id": ids,
            "text": {"type": "string"},
            "depends_on": {"type": "array", "items": ids},
            "kind": {"type": "string", "enum": [k.value for k in StepKind]},
        },
        "required": ["id", "text", "depends_on", "kind"],
    }
    steps = {"type": "array", "minItems": min(3, max_steps), "maxItems": max_steps, "items": step}
    return {"type": "object", "properties": {"steps": steps}, "required": ["steps"]}


def read_plan(answer: str, query: str, max_steps: int) -> Plan:
    """The plan in a decomposition's answer: its JSON if it has usable steps, else its
    numbered or bulleted lines, else one step, the query itself."""
    warnings: list[str] = []
    steps = _from_json(answer, warnings)
    if steps is None:
        steps = [PlanStep(str(i), text) for i, text in enumerate(_from_text(answer), 1)]
        if steps:
            warnings.append("the plan was not the JSON asked for: read from its lines")
    if not steps:
        warnings.append("no usable plan came back: the query is the only step")
        return Plan([PlanStep("1", query.strip())], warnings)
    if len(steps) > max_steps:
        warnings.append(f"the plan had {len(steps)} steps: kept the first {max_steps}")
        steps = steps[:max_steps]
    return Plan(_graph(steps, warnings), warnings)


def _from_json(answer: str, warnings: list[str]) -> list[PlanStep] | None:
    """The steps of a JSON plan, or None when there is no usable JSON plan."""
    match = _OBJECT.search(answer)
    if match is None:
        return None
    try:
        doc = json.loads(match.group(0))
    except ValueError:
        return None
    raw = doc.get("steps") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        return None
    steps: list[PlanStep] = []
    for item in raw:
        if not isinstance(item, dict) or not str(item.get("text", "")).strip():
            continue
        deps = item.get("depends_on")
        kind = item.get("kind")
        steps.append(
            PlanStep(
                step_id=str(item.get("id", len(steps) + 1)).strip(),
                text=str(item["text"]).strip(),
                depends_on=[str(d).strip() for d in deps] if isinstance(deps, list) else [],
                kind=StepKind(kind) if kind in set(StepKind) else StepKind.GENERAL,
            )
        )
    if not steps:
        return None
    seen: set[str] = set()
    for i, step in enumerate(steps, 1):
        if not step.step_id or step.step_id in seen:
            warnings.append(f"step id {step.step_id!r} was given twice: renamed s{i}")
            step.step_id = f"s{i}"
        seen.add(step.step_id)
    return steps


def _from_text(answer: str) -> list[str]:
    return [m.group("text").strip() for m in map(_ITEM.match, answer.splitlines()) if m]


def _graph(steps: list[PlanStep], warnings: list[str]) -> list[PlanStep]:
    """The steps ordered so that each comes after what it needs; unknown and cyclic
    dependencies dropped, each with a warning."""
    ids = {s.step_id for s in steps}
    for step in steps:
        unknown = [d for d in step.depends_on if d not in ids or d == step.step_id]
        if unknown:
            warnings.append(f"step {step.step_id}: dropped unknown dependencies {unknown}")
        step.depends_on = list(dict.fromkeys(d for d in step.depends_on if d not in unknown))
    ordered: list[PlanStep] = []
    placed: set[str] = set()
    pending = list(steps)
    while pending:
        free = [s for s in pending if set(s.depends_on) <= placed]
        if not free:  # a cycle: cut the first pending step loose from what is pending
            stuck = pending[0]
            cut = [d for d in stuck.depends_on if d not in placed]
            warnings.append(f"step {stuck.step_id}: dropped cyclic dependencies {cut}")
            stuck.depends_on = [d for d in stuck.depends_on if d in placed]
            free = [stuck]
        for step in free:
            ordered.append(step)
            placed.add(step.step_id)
            pending.remove(step)
    return ordered


def ready(steps: list[PlanStep], done: set[str], started: set[str]) -> list[PlanStep]:
    """The steps that may start now: not started, every dependency done."""
    return [s for s in steps if s.step_id not in started and set(s.depends_on) <= done]


def fit(texts: list[str], budget_tokens: int) -> list[str]:
    """`texts` trimmed so that together they stay within `budget_tokens`: the short ones
    whole, the long ones cut to an equal share of what is left."""
    budget = max(0, budget_tokens) * CHARS_PER_TOKEN
    if sum(len(t) for t in texts) <= budget:
        return list(texts)
    out = list(texts)
    remaining = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    left = budget
    while remaining:
        share = left // len(remaining)
        i = remaining.pop(0)
        if len(texts[i]) <= share:
            left -= len(texts[i])
            continue
        keep = max(0, share - len(_TRIMMED))
        out[i] = texts[i][:keep] + _TRIMMED
        left -= keep + len(_TRIMMED)
    return out
