"""A project report's figures, computed from the project as of a day: financial,
progress, safety, quality; and its Markdown."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from actors.construction.report import check_dates, figures, markdown
from bus.errors import BadRequest
from schemas.construction import Project, ReportRequest, ReportType

SCHOOL = msgspec.convert(
    {
        "project_id": "school-7", "name": "School extension", "phase": 8,
        "budget_eur": 2_000_000, "costs_to_date_eur": 900_000, "area_m2": 1200,
        "start": "2025-01-01", "end": "2025-12-31", "hours_worked": 40_000,
        "milestones": [
            {"name": "Shell", "planned": "2025-04-30", "actual": "2025-05-10"},
            {"name": "Roof", "planned": "2025-06-15", "actual": "2025-06-10"},
            {"name": "Facade", "planned": "2025-07-01"},
            {"name": "Handover", "planned": "2025-12-15"},
        ],
        "incidents": [
            {"date": "2025-03-02", "kind": "near_miss"},
            {"date": "2025-05-20", "kind": "injury", "lost_days": 3},
            {"date": "2025-08-01", "kind": "injury", "lost_days": 1},
        ],
        "quality_checks": [
            {"date": "2025-04-01", "item": "rebar", "passed": True},
            {"date": "2025-05-01", "item": "concrete cover", "passed": False},
            {"date": "2025-06-01", "item": "waterproofing", "passed": True},
            {"date": "2025-09-01", "item": "windows", "passed": False},
        ],
    },
    Project,
)  # fmt: skip
AS_OF = dt.date(2025, 7, 2)  # 182 of 364 days: exactly half the planned time


def _table(kind: ReportType) -> dict[str, object]:
    return {f.name: (f.value, f.unit) for f in figures(SCHOOL, kind, AS_OF, "en")}


def test_financial_figures() -> None:
    """Half the time passed: a linear plan would have spent 1,000,000 EUR; 900,000 were."""
    assert _table(ReportType.FINANCIAL) == {
        "Budget": (2_000_000, "EUR"), "Costs to date": (900_000, "EUR"),
        "Costs to date per m²": (750, "EUR/m²"), "Budget used": (45, "%"),
        "Budget remaining": (1_100_000, "EUR"), "Time elapsed": (50, "%"),
        "Planned spend to date (linear)": (1_000_000, "EUR"),
        "Cost variance (planned - actual)": (100_000, "EUR"), "Cost variance": (10, "%"),
    }  # fmt: skip


def test_progress_figures() -> None:
    """Shell 10 days late, roof 5 early, facade 1 day overdue, handover not due."""
    assert _table(ReportType.PROGRESS) == {
        "Milestones": (4, ""), "Milestones reached": (2, ""), "Reached on time": (1, ""),
        "Overdue": (1, ""), "Delay: Shell": (10, "days"), "Delay: Roof": (-5, "days"),
        "Delay: Facade": (1, "days"), "Time elapsed": (50, "%"),
    }  # fmt: skip


def test_safety_figures() -> None:
    """Two incidents by 2 July (the third is later): rates per hours worked."""
    assert _table(ReportType.SAFETY) == {
        "Incidents": (2, ""), "Incidents: injury": (1, ""), "Incidents: near_miss": (1, ""),
        "Lost days": (3, "days"), "Lost-time incidents": (1, ""),
        "Incident rate per 200,000 hours": (10, ""),
        "Lost-time incidents per 1,000,000 hours": (25, ""),
        "Days since the last incident": (43, "days"),
    }  # fmt: skip


def test_quality_figures() -> None:
    assert _table(ReportType.QUALITY) == {
        "Quality checks": (3, ""), "Passed": (2, ""), "Failed": (1, ""),
        "Pass rate": (66.67, "%"), "Failed: concrete cover": ("2025-05-01", ""),
    }  # fmt: skip


def test_a_project_without_the_facts_gives_no_figures() -> None:
    bare = Project(project_id="p", name="Bare")
    assert all(figures(bare, kind, AS_OF, "en") == [] for kind in
               (ReportType.FINANCIAL, ReportType.PROGRESS, ReportType.QUALITY))  # fmt: skip


def test_the_markdown_has_the_figures_table_and_the_assessment_in_german() -> None:
    request = ReportRequest(project_id="school-7", type=ReportType.FINANCIAL, language="de")
    found = figures(SCHOOL, ReportType.FINANCIAL, AS_OF, "de")
    text = markdown(SCHOOL, request, "2025-07-02", found, "Alles im Rahmen.")
    assert text.startswith("# Finanzbericht: School extension\n\nStand 2025-07-02")
    assert "| Kennzahl | Wert |" in text and "| Budget verbraucht | 45 % |" in text
    assert "| Kosten bisher je m² | 750 EUR/m² |" in text
    assert text.endswith("## Bewertung\n\nAlles im Rahmen.\n")


def test_impossible_dates_are_bad_requests() -> None:
    broken = msgspec.structs.replace(SCHOOL, start="2025-02-30")
    with pytest.raises(BadRequest, match="start"):
        check_dates(broken)
