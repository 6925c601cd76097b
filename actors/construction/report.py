"""`construction.report`: a Markdown report on a stored project.

The figures are computed here from the project as of a date: budget used, cost variance
against a linear plan (financial); milestones done, overdue and their delays (progress);
incidents, lost days and incident rates per hours worked (safety); checks passed and
failed (quality). They go into the report's tables and, as fact, into the prompt of the
model that writes the assessment.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from bus.client import Client
from bus.errors import BadRequest
from schemas import GenerateResult
from schemas.construction import Figure, Project, ReportRequest, ReportType
from schemas.requests import Language

__all__ = ["analyse", "check_dates", "day", "figures", "markdown"]

# Incident rates: per 200,000 hours (OSHA's TRIR: 100 full-time workers a year) and lost-
# time incidents per 1,000,000 hours (LTIFR).
_TRIR_HOURS, _LTIFR_HOURS = 200_000, 1_000_000

_NAMES: dict[str, tuple[str, str]] = {
    "budget": ("Budget", "Budget"),
    "costs": ("Costs to date", "Kosten bisher"),
    "used": ("Budget used", "Budget verbraucht"),
    "remaining": ("Budget remaining", "Restbudget"),
    "per_m2": ("Costs to date per m²", "Kosten bisher je m²"),
    "elapsed": ("Time elapsed", "Zeit verstrichen"),
    "planned_spend": ("Planned spend to date (linear)", "Geplante Kosten bis heute (linear)"),
    "cost_variance": ("Cost variance (planned - actual)", "Kostenabweichung (Plan - Ist)"),
    "cost_variance_pct": ("Cost variance", "Kostenabweichung"),
    "milestones": ("Milestones", "Meilensteine"),
    "done": ("Milestones reached", "Meilensteine erreicht"),
    "on_time": ("Reached on time", "Termingerecht erreicht"),
    "overdue": ("Overdue", "Überfällig"),
    "delay": ("Delay: {name}", "Verzug: {name}"),
    "incidents": ("Incidents", "Vorfälle"),
    "kind": ("Incidents: {name}", "Vorfälle: {name}"),
    "lost_days": ("Lost days", "Ausfalltage"),
    "lost_time": ("Lost-time incidents", "Vorfälle mit Ausfallzeit"),
    "trir": ("Incident rate per 200,000 hours", "Vorfallrate je 200.000 Stunden"),
    "ltifr": ("Lost-time incidents per 1,000,000 hours", "Ausfallvorfälle je 1.000.000 Stunden"),
    "since_last": ("Days since the last incident", "Tage seit dem letzten Vorfall"),
    "checks": ("Quality checks", "Qualitätsprüfungen"),
    "passed": ("Passed", "Bestanden"),
    "failed": ("Failed", "Nicht bestanden"),
    "pass_rate": ("Pass rate", "Bestehensquote"),
    "failed_item": ("Failed: {name}", "Nicht bestanden: {name}"),
}
_WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "title": "{type} report: {name}",
        "as_of": "As of {as_of}, project {project_id}",
        "figure": "Figure",
        "value": "Value",
        "assessment": "Assessment",
        "none": "No figures can be computed from what the project holds.",
        "prompt": "Write the assessment section of the {type} report on the construction "
        "project {name} ({as_of}). Use only these figures, computed exactly; compute no "
        "others:\n{figures}\nAnswer in English.",
        "progress": "Progress", "safety": "Safety", "financial": "Financial",
        "quality": "Quality", "days": "days",
    },
    "de": {
        "title": "{type}: {name}",
        "as_of": "Stand {as_of}, Projekt {project_id}",
        "figure": "Kennzahl",
        "value": "Wert",
        "assessment": "Bewertung",
        "none": "Aus den Projektdaten lassen sich keine Kennzahlen berechnen.",
        "prompt": "Schreibe den Bewertungsteil des Berichts ({type}) über das Bauprojekt "
        "{name} (Stand {as_of}). Verwende nur diese exakt berechneten Kennzahlen; berechne "
        "keine anderen:\n{figures}\nAntworte auf Deutsch.",
        "progress": "Fortschrittsbericht", "safety": "Sicherheitsbericht",
        "financial": "Finanzbericht", "quality": "Qualitätsbericht", "days": "Tage",
    },
}  # fmt: skip


class _Figures:
    def __init__(self, language: Language) -> None:
        self._column = 0 if language == "en" else 1
        self.out: list[Figure] = []

    def add(self, key: str, value: float | str, unit: str = "", **names: str) -> None:
        name = _NAMES[key][self._column].format(**names)
        self.out.append(Figure(name=name, value=_round(value), unit=unit))


def _round(value: float | str) -> float | str:
    return value if isinstance(value, str) else round(value, 2)


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def day(text: str, field: str) -> dt.date:
    """A date of the request or project; a `bad_request` naming `field` if it is none."""
    try:
        return _date(text)
    except ValueError:
        raise BadRequest(f"{field}: {text!r} is no date") from None


def check_dates(project: Project) -> None:
    """Every date of a project is a real one (the schema checks only their form)."""
    for field in ("start", "end"):
        if (value := getattr(project, field)) is not None:
            day(value, field)
    for i, m in enumerate(project.milestones):
        day(m.planned, f"milestones[{i}].planned")
        if m.actual is not None:
            day(m.actual, f"milestones[{i}].actual")
    for i, incident in enumerate(project.incidents):
        day(incident.date, f"incidents[{i}].date")
    for i, check in enumerate(project.quality_checks):
        day(check.date, f"quality_checks[{i}].date")


def figures(project: Project, kind: ReportType, as_of: dt.date, language: Language) -> list[Figure]:
    """The report's figures, from what the project holds as of `as_of`."""
    f = _Figures(language)
    {
        ReportType.FINANCIAL: _financial,
        ReportType.PROGRESS: _progress,
        ReportType.SAFETY: _safety,
        ReportType.QUALITY: _quality,
    }[kind](project, as_of, f, _WORDS[language]["days"])
    return f.out


def _elapsed(project: Project, as_of: dt.date) -> float | None:
    """The share of the planned duration passed (0..1), if start and end are known."""
    if project.start is None or project.end is None:
        return None
    start, end = _date(project.start), _date(project.end)
    if end <= start:
        return None
    return min(1.0, max(0.0, (as_of - start).days / (end - start).days))


def _financial(project: Project, as_of: dt.date, f: _Figures, days: str) -> None:
    budget, costs = project.budget_eur, project.costs_to_date_eur
    if budget is not None:
        f.add("budget", budget, "EUR")
    if costs is not None:
        f.add("costs", costs, "EUR")
        if project.area_m2:
            f.add("per_m2", costs / project.area_m2, "EUR/m²")
    if budget and costs is not None:
        f.add("used", costs / budget * 100, "%")
        f.add("remaining", budget - costs, "EUR")
    elapsed = _elapsed(project, as_of)
    if elapsed is not None:
        f.add("elapsed", elapsed * 100, "%")
        if budget and costs is not None and elapsed > 0:
            planned = budget * elapsed
            f.add("planned_spend", planned, "EUR")
            f.add("cost_variance", planned - costs, "EUR")
            f.add("cost_variance_pct", (planned - costs) / planned * 100, "%")


def _progress(project: Project, as_of: dt.date, f: _Figures, days: str) -> None:
    milestones = project.milestones
    if not milestones:
        return
    done = [m for m in milestones if m.actual is not None and _date(m.actual) <= as_of]
    overdue = [m for m in milestones if m not in done and _date(m.planned) < as_of]
    f.add("milestones", len(milestones))
    f.add("done", len(done))
    f.add("on_time", sum(1 for m in done if _date(m.actual or m.planned) <= _date(m.planned)))
    f.add("overdue", len(overdue))
    for m in milestones:
        reached = _date(m.actual) if m in done and m.actual else None
        if reached is not None or m in overdue:
            delay = ((reached or as_of) - _date(m.planned)).days
            f.add("delay", delay, days, name=m.name)
    elapsed = _elapsed(project, as_of)
    if elapsed is not None:
        f.add("elapsed", elapsed * 100, "%")


def _safety(project: Project, as_of: dt.date, f: _Figures, days: str) -> None:
    incidents = [i for i in project.incidents if _date(i.date) <= as_of]
    f.add("incidents", len(incidents))
    for kind, count in sorted(Counter(i.kind for i in incidents).items()):
        f.add("kind", count, name=kind)
    lost_time = [i for i in incidents if i.lost_days > 0]
    f.add("lost_days", sum(i.lost_days for i in incidents), days)
    f.add("lost_time", len(lost_time))
    if project.hours_worked:
        f.add("trir", len(incidents) * _TRIR_HOURS / project.hours_worked)
        f.add("ltifr", len(lost_time) * _LTIFR_HOURS / project.hours_worked)
    if incidents:
        last = max(_date(i.date) for i in incidents)
        f.add("since_last", (as_of - last).days, days)


def _quality(project: Project, as_of: dt.date, f: _Figures, days: str) -> None:
    checks = [c for c in project.quality_checks if _date(c.date) <= as_of]
    if not checks:
        return
    passed = sum(1 for c in checks if c.passed)
    f.add("checks", len(checks))
    f.add("passed", passed)
    f.add("failed", len(checks) - passed)
    f.add("pass_rate", passed / len(checks) * 100, "%")
    for c in checks:
        if not c.passed:
            f.add("failed_item", c.date, name=c.item)


def _value(figure: Figure) -> str:
    if isinstance(figure.value, str):
        return figure.value
    number = f"{figure.value:,.2f}" if figure.value != int(figure.value) else f"{figure.value:,.0f}"
    return f"{number} {figure.unit}".strip()


def markdown(
    project: Project, req: ReportRequest, as_of: str, found: list[Figure], assessment: str
) -> str:
    """The report: its title, the figures in a table, the model's assessment."""
    words = _WORDS[req.language]
    lines = [
        f"# {words['title'].format(type=words[req.type.value], name=project.name)}",
        "",
        words["as_of"].format(as_of=as_of, project_id=project.project_id),
        "",
    ]
    if found:
        lines += [f"| {words['figure']} | {words['value']} |", "|---|---:|"]
        lines += [f"| {fig.name} | {_value(fig)} |" for fig in found]
    else:
        lines.append(words["none"])
    if assessment:
        lines += ["", f"## {words['assessment']}", "", assessment.strip()]
    return "\n".join(lines) + "\n"


async def analyse(
    client: Client, req: ReportRequest, project: Project, as_of: str, found: list[Figure]
) -> GenerateResult:
    """The model's assessment, given the figures as fact."""
    words = _WORDS[req.language]
    listed = "\n".join(f"- {fig.name}: {_value(fig)}" for fig in found) or f"- {words['none']}"
    prompt = words["prompt"].format(
        type=words[req.type.value], name=project.name, as_of=as_of, figures=listed
    )
    return await client.generate(
        req.role, prompt, options=req.options, deadline_ms=req.deadline_ms, stream=False
    )
