"""Figures and dates in English and German answers, and what must not be read as one;
the confidence heuristic; the route of each question type; quantities of dimensioned
elements and their check against a model's."""

from __future__ import annotations

import msgspec
import pytest

from actors.construction.extract import dates, quantities
from actors.construction.quantities import check, compute
from actors.construction.query import ROUTES, confidence
from schemas.construction import Computed, Element, MaterialLine, QuantitySurvey, QueryType


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


@pytest.mark.parametrize(
    ("element", "quantity", "unit", "formula"),
    [
        ({"length_m": 6, "width_m": 4, "height_m": 0.25}, 6.0, "m3", "6 m x 4 m x 0.25 m"),
        ({"length_m": 6, "width_m": 4, "height_m": 0.25, "count": 3}, 18.0, "m3",
         "6 m x 4 m x 0.25 m x 3"),
        ({"length_m": 12.5, "width_m": 3}, 37.5, "m2", "12.5 m x 3 m"),
        ({"length_m": 40, "count": 2}, 80.0, "m", "40 m x 2"),
    ],
)  # fmt: skip
def test_quantities_of_dimensioned_elements(
    element: dict[str, float], quantity: float, unit: str, formula: str
) -> None:
    computed = compute(Element(element="slab", material="concrete", **element))
    assert computed is not None
    assert (computed.quantity, computed.unit, computed.formula) == (quantity, unit, formula)


@pytest.mark.parametrize(
    "element", [{}, {"width_m": 4}, {"length_m": 6, "height_m": 3}], ids=["none", "no-length",
                                                                           "no-width"]
)  # fmt: skip
def test_elements_without_a_shape_are_not_computed(element: dict[str, float]) -> None:
    assert compute(Element(element="wall", **element)) is None


SLAB = Computed(element="slab", material="Concrete C25/30", quantity=6.0, unit="m3", formula="")


@pytest.mark.parametrize(
    ("line", "deviation", "agrees"),
    [
        ({"material": "concrete c25/30", "quantity": 6.1, "unit": "m³"}, 1.67, True),
        ({"material": "Concrete C25/30 (ready-mix)", "quantity": 6.3, "unit": "m3"}, 5.0, True),
        ({"material": "Concrete C25/30", "quantity": 7.5, "unit": "m3"}, 25.0, False),
        ({"material": "Concrete C25/30", "quantity": 6.0, "unit": "t"}, None, None),
        ({"material": "rebar", "quantity": 6.0, "unit": "m3"}, None, None),
    ],
)
def test_computed_quantities_are_checked_against_the_model_s(
    line: dict[str, object], deviation: float | None, agrees: bool | None
) -> None:
    survey = QuantitySurvey(materials=[msgspec.convert(line, MaterialLine)])
    checked = check(SLAB, survey)
    assert (checked.deviation_pct, checked.agrees) == (deviation, agrees)
