"""Figures and dates in English and German answers, and what must not be read as one;
the confidence heuristic; the route of each question type."""

from __future__ import annotations

import pytest

from actors.construction.extract import dates, quantities
from actors.construction.query import ROUTES, confidence
from schemas.construction import QueryType


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is 1,234.56 EUR.", [(1234.56, "EUR")]),
        ("Gesamt: 1.234,56 € netto", [(1234.56, "EUR")]),
        ("Budget 2,5 Mio. € brutto", [(2_500_000, "EUR")]),
        ("about 3.2 million EUR", [(3_200_000, "EUR")]),
        ("EUR 1,200 per month", [(1200, "EUR")]),
        ("€ 950 for the permit", [(950, "EUR")]),
        ("120 m² office and 35 m³ concrete", [(120, "m2"), (35, "m3")]),
        ("Fläche 1.250 qm, Beton 12,5 m3", [(1250, "m2"), (12.5, "m3")]),
        ("12 t rebar, 450 kg mesh", [(12, "t"), (450, "kg")]),
        ("Dauer: 3 Wochen, dann 10 Tage Puffer", [(3, "weeks"), (10, "days")]),
        ("takes 6 months, 2 weeks of it curing", [(6, "months"), (2, "weeks")]),
        ("a 19 % surcharge", [(19, "%")]),
        ("1 234 567,89 EUR", [(1_234_567.89, "EUR")]),
        ("Call +49 30 1234567 or 030/1234567", []),
        ("Tested with version 2.3.1 and v1.4", []),
        ("as § 35 Abs. 4 and § 34 say", []),
        ("on 12.03.2025 at 10:30", []),
        ("rows 3, 4 and 5", []),
    ],
)
def test_quantities(text: str, expected: list[tuple[float, str]]) -> None:
    assert [(q.value, q.unit) for q in quantities(text)] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Start on 12.03.2025.", ["2025-03-12"]),
        ("Baubeginn am 3. März 2025, Abnahme 1. Dezember 2025", ["2025-03-03", "2025-12-01"]),
        ("from March 3, 2025 to Sept 30, 2025", ["2025-03-03", "2025-09-30"]),
        ("handover 2025-03-12", ["2025-03-12"]),
        ("Rohbau bis KW 12/2025", ["2025-03-17"]),
        ("the 3 May 2026 inspection", ["2026-05-03"]),
        ("not a date: 31.02.2025, KW 54/2025", []),
        ("version 1.2.3, phone 030 1203 2025", []),
        ("§ 12.03 and 2025", []),
    ],
)
def test_dates(text: str, expected: list[str]) -> None:
    assert [d.date for d in dates(text)] == expected


LONG_SOURCED = (
    "Guardrails must be fitted according to DIN 4420 on every scaffold more than two metres "
    "above the ground, and the inspection is required before each shift starts on site."
)


@pytest.mark.parametrize(
    ("text", "score", "markers"),
    [
        (LONG_SOURCED, 0.95, ["+according to", "+din", "+must"]),
        ("It might work, perhaps.", 0.4, ["-might", "-perhaps", "-short"]),
        ("Das muss gemäß DIN 18065 geprüft werden; vermutlich reicht eine Sichtprüfung, "
         "wenn die Treppe nicht öffentlich genutzt wird und keine Mängel zeigt.", 0.85,
         ["-vermutlich", "+din", "+gemäß", "+muss"]),
        ("word " * 30, 0.8, []),
    ],
)  # fmt: skip
def test_confidence_is_the_documented_heuristic(
    text: str, score: float, markers: list[str]
) -> None:
    assert confidence(text) == (score, markers)


def test_each_type_has_the_original_s_role_and_temperature() -> None:
    routes = {t.value: (r.role, r.temperature) for t, r in ROUTES.items()}
    assert routes == {
        "technical": ("primary", 0.3), "safety": ("primary", 0.2),
        "compliance": ("primary", 0.2), "financial": ("mathematical", 0.3),
        "schedule": ("mathematical", 0.4), "general": ("fast", 0.7),
    }  # fmt: skip
    assert set(ROUTES) == set(QueryType)
