"""`ollamesh construction hoai|safety|query|quantities|document|report|projects|get|list`:
HOAI fees with their analysis, site safety, questions, material surveys, documents,
project reports, stored analyses."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from bus.client import Client
from bus.construction import Stored
from bus.errors import BadRequest
from schemas.construction import (
    AnalysisKind,
    DocumentResult,
    DocumentType,
    HoaiResult,
    ObjectKind,
    QuantitiesResult,
    QueryResult,
    ReportResult,
    ReportType,
    SafetyResult,
)
from schemas.requests import LANGUAGES

__all__ = ["register"]


def _phases(text: str) -> list[int]:
    """`1-4`, `1,2,3`, `5-8,9`: the Leistungsphasen named."""
    phases: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            phases += range(int(low), int(high or low) + 1)
        except ValueError:
            raise BadRequest(f"--phases: {text!r} is not like 1-4 or 1,2,3") from None
    return phases


def _points(text: str) -> dict[int, int]:
    """`4,6,5,3,4,3`: the evaluation points of criteria 1-6, in order."""
    try:
        return {i: int(p) for i, p in enumerate(text.split(","), 1)}
    except ValueError:
        raise BadRequest(f"--points: {text!r} is not whole numbers like 4,6,5,3,4,3") from None


def _rate(text: str) -> str | float:
    if text in ("basis", "upper"):
        return text
    try:
        return float(text)
    except ValueError:
        raise BadRequest(f"--rate: {text!r} is not basis, upper or a number 0..1") from None


def _show(result: Stored, console: Console) -> None:
    if isinstance(result, HoaiResult):
        _show_fee(result, console)
    elif isinstance(result, SafetyResult):
        _show_findings(result, console)
    elif isinstance(result, QueryResult):
        _show_query(result, console)
    elif isinstance(result, QuantitiesResult):
        _show_survey(result, console)
    elif isinstance(result, DocumentResult):
        console.print(
            f"{result.analysis_type.value} analysis of a {result.format} document: "
            f"{result.pages} pages, {result.characters:,} characters, {result.parts} parts",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
    else:
        print(result.markdown, end="")  # the model's text is in it
    if result.text and not isinstance(result, ReportResult):
        print(result.text)
    origin = "from the store, " if result.stored else ""
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.created_at))
    console.print(
        f"[analysis {result.analysis_id}: {origin}{result.model or 'no model'}, {made}]",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip


def _show_survey(result: QuantitiesResult, console: Console) -> None:
    how = "" if result.structured else " (the model ignored the schema: see its text)"
    table = Table(title=f"materials{how}", title_justify="left")
    for column in ("material", "quantity", "unit", "waste %", "EUR"):
        table.add_column(column, overflow="fold")
    for m in result.survey.materials:
        cost = f"{m.cost_eur:,.2f}" if m.cost_eur is not None else "?"
        table.add_row(m.material, f"{m.quantity:g}", m.unit, f"{m.waste_pct:g}", cost)
    console.print(table)
    for c in result.computed:
        verdict = {True: "agrees", False: "DIFFERS", None: "no model figure"}[c.agrees]
        theirs = f", the model's {c.model_quantity:g} ({c.deviation_pct:+g} %)" if (
            c.model_quantity is not None) else ""  # fmt: skip
        console.print(
            f"computed: {c.element}: {c.formula} = {c.quantity:g} {c.unit}{theirs}: {verdict}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip


def _show_query(result: QueryResult, console: Console) -> None:
    how = "" if result.classified else " (not classified: taken as general)"
    markers = f" ({', '.join(result.markers)})" if result.markers else ""
    console.print(
        f"{result.query_type.value}{how}; confidence {result.confidence:.2f}{markers}",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip
    for q in result.quantities:
        console.print(f"figure: {q.text} = {q.value:g} {q.unit}", markup=False, soft_wrap=True)
    for d in result.dates:
        console.print(f"date: {d.text} = {d.date}", markup=False, soft_wrap=True)


def _show_findings(result: SafetyResult, console: Console) -> None:
    found = result.findings
    how = "" if result.structured else " (read from the model's text: it ignored the schema)"
    table = Table(title=f"risks{how}", title_justify="left")
    for column in ("hazard", "severity", "likelihood", "affected"):
        table.add_column(column, overflow="fold")
    for r in found.risks:
        severity = r.severity.value if r.severity else "?"
        table.add_row(r.hazard, severity, r.likelihood or "?", r.affected or "?")
    console.print(table)
    for title, items in (
        ("measures", [f"{m.risk}: {m.measure}" if m.risk else m.measure for m in found.measures]),
        ("PPE", found.ppe),
        ("emergency", found.emergency),
    ):
        console.print(f"{title}:", markup=False)
        for item in items:
            console.print(f"  - {item}", markup=False, soft_wrap=True)


def _show_fee(result: HoaiResult, console: Console) -> None:
    fee = result.fee
    zone = f"zone {fee.zone}" + (f" ({fee.points_total} points)" if fee.points_total else "")
    title = f"HOAI fee: {fee.eligible_costs:,.2f} EUR, {zone}, phases {fee.phases}"
    table = Table(title=title, title_justify="left")
    table.add_column("line")
    table.add_column("EUR", justify="right", no_wrap=True)
    table.add_column("basis", no_wrap=True)
    for line in fee.lines:
        label = f"{line.label}\n[dim]{line.detail}[/]" if line.detail else line.label
        table.add_row(label, f"{line.amount:,.2f}", line.basis)
    if fee.gross is not None:
        table.add_row("[bold]gross[/]", f"[bold]{fee.gross:,.2f}[/]", "")
    console.print(table)
    for note in fee.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


async def construction(args: argparse.Namespace) -> int:
    """Run the `construction` verb asked for."""
    console = Console()
    make = {
        "hoai": _hoai_fields, "query": _query_fields, "quantities": _quantities_fields,
        "projects": _project_fields, "document": _document_fields,
    }.get(args.verb)  # fmt: skip
    fields = make(args) if make else {}  # a bad input is said before connecting
    async with Client(args.nats, prefix=args.prefix, timeout=args.timeout) as client:
        if args.verb == "hoai":
            _show(await client.construction.hoai(**fields), console)
        elif args.verb == "safety":
            _show(await client.construction.safety(**_safety_fields(args)), console)
        elif args.verb == "query":
            _show(await client.construction.query(**fields), console)
        elif args.verb == "quantities":
            _show(await client.construction.quantities(**fields), console)
        elif args.verb == "document":
            _show(await client.construction.document(**fields), console)
        elif args.verb == "report":
            await _report(client, args, console)
        elif args.verb == "projects":
            await _projects(client, args, fields, console)
        elif args.verb == "get":
            _show(await client.construction.get(args.analysis_id), console)
        else:
            table = Table(title="analyses", title_justify="left")
            table.add_column("analysis", no_wrap=True)
            table.add_column("kind", no_wrap=True)
            table.add_column("project", overflow="fold")
            table.add_column("model", overflow="fold")
            table.add_column("created", no_wrap=True)
            for a in await client.construction.list(args.kind, args.project, args.limit):
                made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.created_at))
                table.add_row(a.analysis_id, a.kind.value, a.project_id or "-", a.model, made)
            console.print(table)
    return 0


def _asked(args: argparse.Namespace) -> dict[str, Any]:
    """What every verb's command takes beside its input: language, fresh, project."""
    fields: dict[str, Any] = {"language": args.language, "fresh": args.fresh}
    if getattr(args, "project", None) is not None:
        fields["project_id"] = args.project
    return fields


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


_ELEMENT_FIELDS = ("element", "material", "length_m", "width_m", "height_m", "count")


def _quantities_fields(args: argparse.Namespace) -> dict[str, Any]:
    """`--spec TEXT`, or elements `NAME,MATERIAL,LENGTH[,WIDTH[,HEIGHT[,COUNT]]]`."""
    if bool(args.spec) == bool(args.element):
        raise BadRequest("give --spec TEXT or one --element or more, not both")
    elements: list[dict[str, Any]] = []
    for text in args.element:
        parts = [p.strip() for p in text.split(",")]
        if not 3 <= len(parts) <= 6:
            raise BadRequest(f"--element: {text!r} is not NAME,MATERIAL,LENGTH[,WIDTH[,HEIGHT]]")
        try:
            numbers = [float(p) for p in parts[2:5]] + [int(p) for p in parts[5:]]
        except ValueError:
            raise BadRequest(f"--element: {text!r} has a dimension that is no number") from None
        elements.append(dict(zip(_ELEMENT_FIELDS, [*parts[:2], *numbers], strict=False)))
    return {"specifications": args.spec or elements, **_asked(args)}


def _query_fields(args: argparse.Namespace) -> dict[str, Any]:
    facts: dict[str, str] = {}
    for fact in args.fact:
        name, sep, value = fact.partition("=")
        if not sep or not name.strip():
            raise BadRequest(f"--fact: {fact!r} is not NAME=VALUE")
        facts[name.strip()] = value.strip()
    context = {"phase": args.phase, "regulations": args.regulation, "facts": facts}
    context = {k: v for k, v in context.items() if v}
    return {"query": args.question, "context": context, **_asked(args)}


def _safety_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "conditions": args.conditions, "workers": args.workers,
        "equipment": _items(args.equipment), "hazards": _items(args.hazards), **_asked(args),
    }  # fmt: skip


async def _report(client: Client, args: argparse.Namespace, console: Console) -> None:
    fields = _asked(args)
    if args.as_of:
        fields["as_of"] = args.as_of
    result = await client.construction.report(args.project_id, args.type, **fields)
    if args.output is None:
        _show(result, console)
        return
    try:
        await asyncio.to_thread(Path(args.output).write_text, result.markdown, encoding="utf-8")
    except OSError as exc:
        raise BadRequest(f"-o: cannot write {args.output}: {exc.strerror}") from None
    console.print(f"[report {result.analysis_id} written to {args.output}]", markup=False)


def _document_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The document's bytes, read before connecting."""
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"{args.file}: cannot read it: {exc.strerror}") from None
    return {"analysis_type": args.type, "data": data, "filename": path.name, **_asked(args)}


def _project_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The project in the file `projects put` names (read before connecting)."""
    if args.action != "put":
        return {}
    try:
        project: dict[str, Any] = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadRequest(f"{args.file}: not a readable JSON project: {exc}") from None
    return project


async def _projects(
    client: Client, args: argparse.Namespace, project: dict[str, Any], console: Console
) -> None:
    if args.action == "put":
        stored = await client.construction.put_project(project)
        console.print(f"project {stored.project.project_id} stored", markup=False)
        return
    found = (
        [await client.construction.project(args.project_id)]
        if args.action == "get"
        else await client.construction.projects(args.limit)
    )
    for p in found:
        print(json.dumps(msgspec.to_builtins(p.project), ensure_ascii=False, indent=2))


def _hoai_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "eligible_costs": args.costs, "kind": args.kind, "phases": _phases(args.phases),
        "rate": _rate(args.rate), "incidental_costs_pct": args.incidentals, "vat_pct": args.vat,
        "analysis": not args.no_analysis, "project_type": args.project_type, **_asked(args),
    }  # fmt: skip
    if args.points:
        fields["points"] = _points(args.points)
    else:
        fields["zone"] = args.zone
    optional = {"area_m2": args.area, "agreed_fee": args.agreed_fee}
    fields |= {k: v for k, v in optional.items() if v is not None}
    if args.conversion is not None:
        fields["conversion"] = {} if args.conversion < 0 else {"surcharge_pct": args.conversion}
    return fields


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add `construction` and its verbs; `run` runs the chosen verb's coroutine."""
    p = sub.add_parser("construction", help="HOAI fees with their analysis, stored analyses")
    verbs = p.add_subparsers(dest="verb", required=True)
    h = verbs.add_parser("hoai", help="the HOAI 2021 fee, computed exactly, then its analysis")
    h.add_argument("--costs", type=float, required=True, help="anrechenbare Kosten, EUR")
    zone = h.add_mutually_exclusive_group(required=True)
    zone.add_argument("--zone", choices=["I", "II", "III", "IV", "V"], help="Honorarzone")
    zone.add_argument("--points", help="evaluation points of criteria 1-6, e.g. 4,6,5,3,4,3")
    h.add_argument("--kind", choices=[k.value for k in ObjectKind], default="building")
    h.add_argument("--phases", default="1-9", help="Leistungsphasen, e.g. 1-4 or 2,3,5")
    h.add_argument("--rate", default="basis", help="basis, upper, or a position 0..1")
    h.add_argument("--agreed-fee", type=float, help="a full fee agreed in text form, EUR")
    h.add_argument(
        "--conversion", type=float, nargs="?", const=-1.0,
        help="Umbau: the surcharge agreed in percent (alone: none agreed, 20 %% from zone III)",
    )  # fmt: skip
    h.add_argument("--incidentals", type=float, default=0.0, help="Nebenkosten, percent")
    h.add_argument("--vat", type=float, default=19.0, help="VAT, percent")
    h.add_argument("--project-type", default="", help="e.g. school, office building")
    h.add_argument("--area", type=float, help="area in m²")
    h.add_argument("--project", help="the project's id, to find the analysis by later")
    h.add_argument("--language", choices=LANGUAGES, default="en")
    h.add_argument("--no-analysis", action="store_true", help="the fee alone, no model asked")
    h.add_argument("--fresh", action="store_true", help="analyse again, even if stored")
    sf = verbs.add_parser("safety", help="a site's risks, measures, PPE and emergency steps")
    sf.add_argument("--conditions", default="", help="e.g. 'rain, wind 40 km/h, clay soil'")
    sf.add_argument("--workers", type=int, default=0, help="workers on site")
    sf.add_argument("--equipment", default="", help="comma-separated, e.g. crane,scaffold")
    sf.add_argument("--hazards", default="", help="known hazards, comma-separated")
    sf.add_argument("--project", help="the project's id, to find the analysis by later")
    sf.add_argument("--language", choices=LANGUAGES, default="en")
    sf.add_argument("--fresh", action="store_true", help="analyse again, even if stored")
    q = verbs.add_parser("query", help="a question, classified and answered, with figures")
    q.add_argument("question")
    q.add_argument("--phase", type=int, help="the project's HOAI Leistungsphase (1-9)")
    q.add_argument("--regulation", action="append", default=[], help="a regulation that applies")
    q.add_argument("--fact", action="append", default=[], help="a project fact, NAME=VALUE")
    q.add_argument("--project", help="the project's id, to find the analysis by later")
    q.add_argument("--language", choices=LANGUAGES, default="en")
    q.add_argument("--fresh", action="store_true", help="answer again, even if stored")
    qs = verbs.add_parser("quantities", help="a material survey, dimensioned elements computed")
    qs.add_argument("--spec", help="the specifications as text")
    qs.add_argument(
        "--element", action="append", default=[],
        help="NAME,MATERIAL,LENGTH[,WIDTH[,HEIGHT[,COUNT]]] in metres, e.g. slab,C25/30,6,4,0.25",
    )  # fmt: skip
    qs.add_argument("--project", help="the project's id, to find the analysis by later")
    qs.add_argument("--language", choices=LANGUAGES, default="en")
    qs.add_argument("--fresh", action="store_true", help="survey again, even if stored")
    dc = verbs.add_parser("document", help="analyse a PDF, DOCX, text or Markdown file")
    dc.add_argument("file")
    dc.add_argument("--type", required=True, choices=[t.value for t in DocumentType])
    dc.add_argument("--project", help="the project's id, to find the analysis by later")
    dc.add_argument("--language", choices=LANGUAGES, default="en")
    dc.add_argument("--fresh", action="store_true", help="analyse again, even if stored")
    rp = verbs.add_parser("report", help="a Markdown report on a stored project")
    rp.add_argument("project_id")
    rp.add_argument("--type", required=True, choices=[t.value for t in ReportType])
    rp.add_argument("--as-of", help="the day the figures are computed for (default: today)")
    rp.add_argument("-o", "--output", help="write the Markdown to this file")
    rp.add_argument("--language", choices=LANGUAGES, default="en")
    rp.add_argument("--fresh", action="store_true", help="write it again, even if stored")
    pj = verbs.add_parser("projects", help="put a project (a JSON file), get one, list them")
    actions = pj.add_subparsers(dest="action", required=True)
    put = actions.add_parser("put", help="store the project in FILE (JSON)")
    put.add_argument("file")
    get = actions.add_parser("get", help="one project, as JSON")
    get.add_argument("project_id")
    listing = actions.add_parser("list", help="the projects changed last, as JSON")
    listing.add_argument("--limit", type=int, default=20)
    for action in (put, get, listing):
        bus_args(action)
        action.set_defaults(func=run)
    g = verbs.add_parser("get", help="one stored analysis")
    g.add_argument("analysis_id")
    ls = verbs.add_parser("list", help="the latest analyses")
    ls.add_argument("--kind", choices=[k.value for k in AnalysisKind])
    ls.add_argument("--project")
    ls.add_argument("--limit", type=int, default=20)
    for verb in (h, sf, q, qs, dc, rp, g, ls):
        bus_args(verb)
        verb.set_defaults(func=run)
