"""`construction.query`: a question classified, enriched, answered, then weighed.

The classifier (the `fast` role, temperature 0) must answer one of the six types: the
JSON schema's enum says so (the original's free text could match none). Each type has
the original's model and temperature; the question goes to it with its context (the
stored project's facts when it names one, the HOAI phase, the regulations, other facts).
The answer gets a confidence from a documented heuristic, and a financial or schedule
answer the figures and dates in it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from actors.construction.extract import dates, quantities
from bus.client import Client
from schemas import GenerateResult
from schemas.construction import DateFound, Project, Quantity, QueryRequest, QueryType
from schemas.requests import Language

__all__ = [
    "CLASSIFY_SCHEMA",
    "ROUTES",
    "Route",
    "answer",
    "classify",
    "confidence",
    "enriched",
    "figures",
]


@dataclass(frozen=True)
class Route:
    """The role a type of question goes to, and at what temperature."""

    role: str
    temperature: float


# The original service's choice per type.
ROUTES = {
    QueryType.TECHNICAL: Route("primary", 0.3),
    QueryType.SAFETY: Route("primary", 0.2),
    QueryType.COMPLIANCE: Route("primary", 0.2),
    QueryType.FINANCIAL: Route("mathematical", 0.3),
    QueryType.SCHEDULE: Route("mathematical", 0.4),
    QueryType.GENERAL: Route("fast", 0.7),
}
CLASSIFY_SCHEMA = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": [t.value for t in QueryType]}},
    "required": ["type"],
}
_decode_type = msgspec.json.Decoder(dict[str, QueryType]).decode

_WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "classify": "Classify this construction question as exactly one of: technical, "
        "safety, compliance, financial, schedule, general. Answer as JSON "
        '{{"type": ...}}.\n\nQuestion: {query}',
        "phase": "HOAI phase (Leistungsphase): {phase}",
        "regulations": "Regulations that apply: {regulations}",
        "fact": "{name}: {value}",
        "context": "Context:",
        "question": "Question:",
        "answer_in": "Answer in English.",
        "project": "Project",
        "budget": "Budget (EUR)",
        "costs": "Costs to date (EUR)",
        "area": "Area (m²)",
        "dates": "Planned",
        "project_phase": "HOAI phase",
    },
    "de": {
        "classify": "Ordne diese Frage zum Bauwesen genau einem Typ zu: technical, safety, "
        'compliance, financial, schedule, general. Antworte als JSON {{"type": ...}}.'
        "\n\nFrage: {query}",
        "phase": "HOAI-Leistungsphase: {phase}",
        "regulations": "Geltende Vorschriften: {regulations}",
        "fact": "{name}: {value}",
        "context": "Kontext:",
        "question": "Frage:",
        "answer_in": "Antworte auf Deutsch.",
        "project": "Projekt",
        "budget": "Budget (EUR)",
        "costs": "Kosten bisher (EUR)",
        "area": "Fläche (m²)",
        "dates": "Geplant",
        "project_phase": "HOAI-Leistungsphase",
    },
}


async def classify(client: Client, req: QueryRequest) -> tuple[QueryType, bool]:
    """The question's type, and whether the classifier answered one of the types."""
    prompt = _WORDS[req.language]["classify"].format(query=req.query)
    result = await client.generate(
        "fast", prompt, format=CLASSIFY_SCHEMA, options={"temperature": 0},
        deadline_ms=req.deadline_ms, stream=False,
    )  # fmt: skip
    try:
        return _decode_type(result.response.strip())["type"], True
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError):
        return QueryType.GENERAL, False


def _project_lines(project: Project, words: dict[str, str]) -> list[str]:
    facts = {
        words["project"]: project.name, words["project_phase"]: project.phase,
        words["budget"]: project.budget_eur, words["costs"]: project.costs_to_date_eur,
        words["area"]: project.area_m2, words["dates"]: (
            f"{project.start} - {project.end}" if project.start and project.end else None
        ),
    }  # fmt: skip
    return [f"{name}: {value}" for name, value in facts.items() if value is not None]


def enriched(req: QueryRequest, project: Project | None = None) -> str:
    """The question with its context (and the project's facts), as the answering model
    gets it."""
    words = _WORDS[req.language]
    context = req.context
    lines = _project_lines(project, words) if project is not None else []
    if context is not None:
        if context.phase is not None:
            lines.append(words["phase"].format(phase=context.phase))
        if context.regulations:
            lines.append(words["regulations"].format(regulations=", ".join(context.regulations)))
        lines += [words["fact"].format(name=k, value=v) for k, v in context.facts.items()]
    if not lines:
        return req.query
    return "\n".join([words["context"], *lines, "", words["question"], req.query])


async def answer(
    client: Client,
    req: QueryRequest,
    kind: QueryType,
    roles: frozenset[str],
    project: Project | None = None,
) -> GenerateResult:
    """The answer from the type's role (`primary` when the fleet has no such role) at
    the type's temperature, unless the request sets one."""
    route = ROUTES[kind]
    role = route.role if route.role in roles else "primary"
    options = msgspec.structs.asdict(req.options) if req.options else {}
    if options.get("temperature") is None:
        options["temperature"] = route.temperature
    return await client.generate(
        role, enriched(req, project), system=_WORDS[req.language]["answer_in"],
        options={k: v for k, v in options.items() if v is not None},
        deadline_ms=req.deadline_ms, stream=False,
    )  # fmt: skip


# The confidence heuristic: a base, less for each distinct hedge, more for each distinct
# marker of a sourced statement (at most three count), less for a very short answer.
_BASE, _HEDGE, _SURE, _SURE_MAX, _SHORT, _SHORT_WORDS = 0.8, 0.1, 0.05, 3, 0.2, 20
_HEDGES = (
    "might", "may", "possibly", "perhaps", "not sure", "unclear", "it depends",
    "i think", "probably", "cannot be determined", "vielleicht", "möglicherweise",
    "eventuell", "unklar", "nicht sicher", "vermutlich", "wahrscheinlich",
    "kommt darauf an", "ich denke",
)  # fmt: skip
_SURE_MARKERS = (
    "must", "required", "according to", "din", "muss", "gemäß", "vorgeschrieben", "laut",
)  # fmt: skip


def _words(markers: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(re.escape(m) for m in markers) + r")\b")


_HEDGE_RE, _SURE_RE = _words(_HEDGES), _words(_SURE_MARKERS)


def confidence(text: str) -> tuple[float, list[str]]:
    """A confidence in 0.05..0.95 for an answer, and the markers that moved it."""
    lowered = text.lower()  # not casefold: it makes ß "ss"
    hedges = sorted(set(_HEDGE_RE.findall(lowered)))
    sure = sorted(set(_SURE_RE.findall(lowered)))[:_SURE_MAX]
    if "§" in lowered and len(sure) < _SURE_MAX:
        sure.append("§")
    value = _BASE - _HEDGE * len(hedges) + _SURE * len(sure)
    markers = [f"-{h}" for h in hedges] + [f"+{m}" for m in sure]
    if len(text.split()) < _SHORT_WORDS:
        value -= _SHORT
        markers.append("-short")
    return round(min(0.95, max(0.05, value)), 2), markers


def figures(kind: QueryType, text: str) -> tuple[list[Quantity], list[DateFound]]:
    """The figures and dates of a financial or schedule answer (none for the others)."""
    if kind not in (QueryType.FINANCIAL, QueryType.SCHEDULE):
        return [], []
    return quantities(text), dates(text)
