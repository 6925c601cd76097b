"""`construction.safety`: a site's risks, measures, PPE and emergency steps.

The model is asked for JSON following the findings' schema (Ollama's `format`) and its
answer is validated against it. A model that ignores the format is read the way the
original service meant to and did not manage: by its sections (`RISKS:`, `MEASURES:`,
`PPE:`, `EMERGENCY:`, or their German names, as plain, numbered or Markdown headings),
each line an item whatever its bullet; the result then says `structured: false`.
"""

from __future__ import annotations

import json
import re

import msgspec

from bus.client import Client
from schemas import GenerateResult
from schemas.construction import Measure, Risk, SafetyFindings, SafetyRequest, Severity
from schemas.requests import Language

__all__ = ["SCHEMA", "TEMPLATE", "analyse", "read_findings", "read_sections"]

TEMPLATE = "safety_check_template"
SCHEMA = msgspec.json.schema(SafetyFindings)
_decode = msgspec.json.Decoder(SafetyFindings).decode

_SECTIONS = {
    "risks": ("risks", "hazards", "risiken", "gefahren", "gefährdungen", "gefaehrdungen"),
    "measures": (
        "measures", "safety measures", "recommendations", "maßnahmen", "massnahmen",
        "schutzmaßnahmen", "schutzmassnahmen", "empfehlungen",
    ),
    "ppe": (
        "ppe", "ppe requirements", "personal protective equipment", "psa",
        "persönliche schutzausrüstung",
    ),
    "emergency": (
        "emergency", "emergency procedures", "notfall", "notfallmaßnahmen",
        "notfallmassnahmen", "notfallverfahren",
    ),
}  # fmt: skip
_SECTION_OF = {name: section for section, names in _SECTIONS.items() for name in names}
_MARKS = re.compile(r"^[\s#>*_]+|[\s*_]+$")
_NUMBER = re.compile(r"^\d+[.)]\s*")
_BULLET = re.compile(r"^\s*(?:[-*•·▪‣\u2013\u2014+]|\d+[.)]|[a-z][.)]|\(\d+\))\s+")
_SEVERITY_WORDS = {
    "low": Severity.LOW, "niedrig": Severity.LOW, "gering": Severity.LOW,
    "medium": Severity.MEDIUM, "moderate": Severity.MEDIUM, "mittel": Severity.MEDIUM,
    "high": Severity.HIGH, "hoch": Severity.HIGH,
    "critical": Severity.CRITICAL, "kritisch": Severity.CRITICAL,
}  # fmt: skip
_WORD = "|".join(_SEVERITY_WORDS)
_SEVERITY = re.compile(
    rf"\(({_WORD})\)|\b(?:severity|schweregrad|schwere)\s*[:=]\s*({_WORD})\b", re.IGNORECASE
)
_ANSWER_IN: dict[Language, str] = {
    "en": "Answer in English, as JSON with risks (hazard, severity, likelihood, affected), "
    "measures (risk, measure), ppe and emergency.",
    "de": "Antworte auf Deutsch, als JSON mit risks (hazard, severity, likelihood, "
    "affected), measures (risk, measure), ppe und emergency.",
}


def read_findings(text: str) -> tuple[SafetyFindings, bool]:
    """The findings in a model's answer, and whether it was the JSON asked for."""
    try:
        return _decode(text.strip()), True
    except (msgspec.DecodeError, msgspec.ValidationError):
        return read_sections(text), False


def _heading(line: str) -> tuple[str | None, str]:
    """The section a line opens (and any text after its colon), or None."""
    bare = _NUMBER.sub("", _MARKS.sub("", line))
    name, colon, rest = bare.partition(":")
    section = _SECTION_OF.get(name.strip(" *_").casefold())
    if section is None or (not colon and bare != name):
        return None, ""
    return section, rest.strip(" *_")


def read_sections(text: str) -> SafetyFindings:
    """Findings read from a text's sections; lines before the first heading are not
    findings (a preamble)."""
    items: dict[str, list[str]] = {section: [] for section in _SECTIONS}
    section: str | None = None
    for line in text.splitlines():
        opened, rest = _heading(line)
        if opened is not None:
            section, line = opened, rest
        item = _BULLET.sub("", line).strip(" *_")
        if section is not None and item:
            items[section].append(item)
    return SafetyFindings(
        risks=[Risk(hazard=item, severity=_severity(item)) for item in items["risks"]],
        measures=[Measure(measure=item) for item in items["measures"]],
        ppe=items["ppe"],
        emergency=items["emergency"],
    )


def _severity(item: str) -> Severity | None:
    """The severity a line states, as "(high)" or "severity: high"; None if it says none."""
    found = _SEVERITY.search(item)
    if found is None:
        return None
    return _SEVERITY_WORDS[(found[1] or found[2]).casefold()]


async def analyse(client: Client, req: SafetyRequest) -> GenerateResult:
    """Ask the model for the findings, from the prompt store's template, as JSON."""
    conditions = (
        req.conditions
        if isinstance(req.conditions, str)
        else json.dumps(req.conditions, ensure_ascii=False)
    )
    variables = {
        "conditions": conditions or "-",
        "workers": req.workers,
        "equipment": ", ".join(req.equipment) or "-",
        "hazards": ", ".join(req.hazards) or "None identified",
    }
    return await client.generate(
        req.role,
        prompt_template=TEMPLATE,
        variables=variables,
        system=_ANSWER_IN[req.language],
        format=SCHEMA,
        options=req.options,
        deadline_ms=req.deadline_ms,
        stream=False,
    )
