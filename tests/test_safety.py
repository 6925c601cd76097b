"""Reading a safety analysis: the JSON asked for, validated, or else the text's sections
(English and German headings, any bullet), as the original service meant to."""

from __future__ import annotations

import msgspec
import pytest

from actors.construction.safety import SCHEMA, read_findings, read_sections
from schemas.construction import Measure, Risk, SafetyFindings, Severity

SEED_STYLE = """Here is the analysis.

RISKS:
- Falls from the scaffold (high)
- Struck by the crane's load, severity: critical
- Slips on wet boards

MEASURES:
- Guardrails and toe boards on every lift
- Exclusion zone under the crane
PPE: helmets, harnesses
EMERGENCY:
1. Call 112
2) Rescue plan for suspended workers
"""

GERMAN = """## Risiken
• Absturz vom Gerüst (hoch)
* Stromschlag, Schwere: mittel

**Maßnahmen:**
— Seitenschutz anbringen
a) Kabel prüfen

PSA:
- Helm
Notfall:
- Ersthelfer benennen
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(SEED_STYLE, SafetyFindings(
            risks=[Risk(hazard="Falls from the scaffold (high)", severity=Severity.HIGH),
                   Risk(hazard="Struck by the crane's load, severity: critical",
                        severity=Severity.CRITICAL),
                   Risk(hazard="Slips on wet boards")],
            measures=[Measure(measure="Guardrails and toe boards on every lift"),
                      Measure(measure="Exclusion zone under the crane")],
            ppe=["helmets, harnesses"],
            emergency=["Call 112", "Rescue plan for suspended workers"],
        ), id="seed-style"),
        pytest.param(GERMAN, SafetyFindings(
            risks=[Risk(hazard="Absturz vom Gerüst (hoch)", severity=Severity.HIGH),
                   Risk(hazard="Stromschlag, Schwere: mittel", severity=Severity.MEDIUM)],
            measures=[Measure(measure="Seitenschutz anbringen"), Measure(measure="Kabel prüfen")],
            ppe=["Helm"],
            emergency=["Ersthelfer benennen"],
        ), id="german-markdown"),
        pytest.param("HAZARDS: dust\nRECOMMENDATIONS: masks", SafetyFindings(
            risks=[Risk(hazard="dust")], measures=[Measure(measure="masks")],
        ), id="inline-headings"),
        pytest.param("Nothing to report.\nAll good.", SafetyFindings(), id="no-sections"),
        pytest.param("The risks: none that I can see.", SafetyFindings(), id="not-a-heading"),
    ],
)  # fmt: skip
def test_sections_are_read_from_text(text: str, expected: SafetyFindings) -> None:
    assert read_sections(text) == expected


def test_the_json_asked_for_is_structured() -> None:
    findings = SafetyFindings(
        risks=[Risk(hazard="falls", severity=Severity.HIGH, likelihood="likely")],
        measures=[Measure(risk="falls", measure="guardrails")],
        ppe=["harness"],
        emergency=["call 112"],
    )
    assert read_findings(msgspec.json.encode(findings).decode()) == (findings, True)


@pytest.mark.parametrize(
    "answer",
    [
        '{"risks": [{"hazard": "falls", "severity": "extreme"}]}',  # not in the enum
        '{"risks": [{"severity": "high"}]}',  # no hazard
        '{"risks": "falls"}',
        "not json at all",
    ],
)
def test_json_that_breaks_the_schema_is_read_as_text(answer: str) -> None:
    """Invalid against the schema: not structured (and here no sections either)."""
    findings, structured = read_findings(answer)
    assert not structured and findings == SafetyFindings()


def test_the_schema_asks_for_the_four_lists_and_the_severities() -> None:
    defs = SCHEMA["$defs"]
    assert set(defs["SafetyFindings"]["properties"]) == {"risks", "measures", "ppe", "emergency"}
    assert sorted(defs["Severity"]["enum"]) == ["critical", "high", "low", "medium"]
    assert defs["Risk"]["required"] == ["hazard"]
