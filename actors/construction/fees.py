"""The HOAI 2021 fee of the Objektplanung Gebäude und Innenräume, computed exactly.

The figures are the regulation's (`data/`: the § 35 Abs. 1 table and the § 34 Abs. 3
phase shares, checked across independent copies of its text). Amounts are `Decimal`s:
each line of the calculation is rounded to the cent and the next one computed from it,
so the lines a user reads add up. Costs outside the table get no figure (the HOAI 2021
gives none), never a clamped or extrapolated one.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import itertools
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from bus.errors import BadRequest
from schemas.construction import (
    ZONES,
    FeeLine,
    HoaiFee,
    HoaiFeeRequest,
    ObjectKind,
    Zone,
)
from schemas.requests import Language

__all__ = ["MAX_COSTS", "MIN_COSTS", "hoai_fee", "phase_share", "table_fee", "zone_by_points"]

_CENT = Decimal("0.01")
_HUNDRED = Decimal(100)
# § 6 Abs. 2 Satz 4: without an agreement, 20 % from average difficulty (zone III) up.
_DEFAULT_SURCHARGE = Decimal(20)
# § 36 Abs. 1 and 2: what may be agreed at average difficulty.
_SURCHARGE_NAMED = {ObjectKind.BUILDING: Decimal(33), ObjectKind.INTERIOR: Decimal(50)}
# § 35 Abs. 5 and 6: the most points per criterion (1-6).
_MAX_POINTS = {
    ObjectKind.BUILDING: {1: 6, 2: 9, 3: 9, 4: 6, 5: 6, 6: 6},
    ObjectKind.INTERIOR: {1: 6, 2: 6, 3: 6, 4: 6, 5: 9, 6: 9},
}
# § 35 Abs. 4: the highest total of each zone (V goes to 42).
_ZONE_UP_TO = (("I", 10), ("II", 18), ("III", 26), ("IV", 34), ("V", 42))


@dataclass(frozen=True)
class _Row:
    costs: Decimal
    von: dict[str, Decimal]
    bis: dict[str, Decimal]


def _data(name: str) -> list[dict[str, str]]:
    text = importlib.resources.files("actors.construction").joinpath("data", name).read_text()
    return list(csv.DictReader(text.splitlines()))


@functools.cache
def _table() -> tuple[_Row, ...]:
    rows: dict[Decimal, _Row] = {}
    for line in _data("honorartafel_35.csv"):
        costs = Decimal(line["anrechenbare_kosten"])
        row = rows.setdefault(costs, _Row(costs, {}, {}))
        row.von[line["zone"]] = Decimal(line["von"])
        row.bis[line["zone"]] = Decimal(line["bis"])
    return tuple(sorted(rows.values(), key=lambda r: r.costs))


@functools.cache
def _phase_shares() -> dict[int, tuple[str, Decimal, Decimal]]:
    """Leistungsphase -> (name, share for buildings, share for interiors), in percent."""
    return {
        int(line["leistungsphase"]): (
            line["name"],
            Decimal(line["gebaeude_pct"]),
            Decimal(line["innenraeume_pct"]),
        )
        for line in _data("leistungsphasen_34.csv")
    }


MIN_COSTS = _table()[0].costs
MAX_COSTS = _table()[-1].costs


def table_fee(costs: Decimal, zone: Zone) -> tuple[Decimal, Decimal, str] | None:
    """The Basishonorarsatz and the oberer Honorarsatz for `costs` in `zone` (§ 35 Abs. 1,
    interpolated linearly between rows, § 13), and the rows used; None outside the table."""
    rows = _table()
    if not MIN_COSTS <= costs <= MAX_COSTS:
        return None
    for low, high in itertools.pairwise(rows):
        if costs == low.costs:
            return low.von[zone], low.bis[zone], _eur(low.costs)
        if costs < high.costs:
            share = (costs - low.costs) / (high.costs - low.costs)
            von = low.von[zone] + (high.von[zone] - low.von[zone]) * share
            bis = low.bis[zone] + (high.bis[zone] - low.bis[zone]) * share
            return von, bis, f"{_eur(low.costs)} .. {_eur(high.costs)}"
    last = rows[-1]
    return last.von[zone], last.bis[zone], _eur(last.costs)


def zone_by_points(kind: ObjectKind, points: dict[int, int]) -> tuple[Zone, int]:
    """The Honorarzone the evaluation points decide (§ 35 Abs. 4-6), and their total."""
    maxima = _MAX_POINTS[kind]
    missing = sorted(set(maxima) - set(points))
    if missing:
        raise BadRequest(f"points: criteria {missing} have no points (all six are scored)")
    over = [f"{c} ({p} > {maxima[c]})" for c, p in sorted(points.items()) if p > maxima[c]]
    if over:
        raise BadRequest(f"points: more than the criterion allows for {kind.value}s: {over}")
    total = sum(points.values())
    zone = next(z for z, up_to in _ZONE_UP_TO if total <= up_to)
    return zone, total  # type: ignore[return-value]


def phase_share(kind: ObjectKind, phases: list[int]) -> Decimal:
    """The share of the full fee, in percent, that the Leistungsphasen earn (§ 34 Abs. 3)."""
    if len(set(phases)) != len(phases):
        raise BadRequest(f"phases: each Leistungsphase once, not {phases}")
    shares = _phase_shares()
    column = 1 if kind is ObjectKind.BUILDING else 2
    return sum((shares[p][column] for p in phases), Decimal(0))


def hoai_fee(req: HoaiFeeRequest) -> HoaiFee:
    """The fee asked for, line by line, or why the HOAI gives none."""
    words = _WORDS[req.language]
    zone, total = _zone(req)
    costs = Decimal(str(req.eligible_costs))
    phases = sorted(req.phases)
    share = phase_share(req.kind, phases)
    out = HoaiFee(
        kind=req.kind, eligible_costs=float(costs), zone=zone, points_total=total,
        phases=phases, phase_share_pct=float(share), in_table=table_fee(costs, zone) is not None,
    )  # fmt: skip
    full = _full_fee(req, costs, zone, out, words)
    if full is None:
        return out
    fee = _line(out, words["phases"], full * share / _HUNDRED, "§ 34 Abs. 3", _shares(req, phases))
    if (surcharge := _surcharge(req, zone, out, words)) is not None:
        fee += _line(out, words["conversion"].format(pct=_pct(surcharge)),
                     fee * surcharge / _HUNDRED, "§ 36, § 6 Abs. 2")  # fmt: skip
    if req.incidental_costs_pct:
        incidental = Decimal(str(req.incidental_costs_pct))
        fee += _line(out, words["incidental"].format(pct=_pct(incidental)),
                     fee * incidental / _HUNDRED, "§ 14")  # fmt: skip
    vat_pct = Decimal(str(req.vat_pct))
    vat = _cents(fee * vat_pct / _HUNDRED)
    out.net, out.vat, out.gross = float(fee), float(vat), float(fee + vat)
    out.lines.append(FeeLine(label=words["vat"].format(pct=_pct(vat_pct)), amount=float(vat),
                             basis="§ 16"))  # fmt: skip
    return out


def _zone(req: HoaiFeeRequest) -> tuple[Zone, int | None]:
    if (req.zone is None) == (req.points is None):
        raise BadRequest("give the Honorarzone (zone) or the evaluation points, one of them")
    if req.zone is not None:
        return req.zone, None
    assert req.points is not None
    return zone_by_points(req.kind, req.points)


def _full_fee(
    req: HoaiFeeRequest, costs: Decimal, zone: Zone, out: HoaiFee, words: dict[str, str]
) -> Decimal | None:
    """The fee for all nine phases: agreed, or from the table at the rate asked for."""
    if req.agreed_fee is not None:
        return _line(out, words["agreed"], Decimal(str(req.agreed_fee)), "§ 7 Abs. 1")
    found = table_fee(costs, zone)
    if found is None:
        out.notes.append(words["outside"].format(costs=_eur(costs), low=_eur(MIN_COSTS),
                                                 high=_eur(MAX_COSTS)))  # fmt: skip
        return None
    von, bis, rows = found
    if req.rate == "basis":
        value, rate = von, words["basis"]
    elif req.rate == "upper":
        value, rate = bis, words["upper"]
    else:
        position = Decimal(str(req.rate))
        value, rate = (
            von + (bis - von) * position,
            words["position"].format(pct=_pct(position * 100)),
        )
    detail = words["table"].format(von=_eur(_cents(von)), bis=_eur(_cents(bis)), rows=rows)
    label = words["full"].format(zone=zone, rate=rate)
    return _line(
        out, label, value, "§ 35 Abs. 1, § 13" if " .. " in rows else "§ 35 Abs. 1", detail
    )


def _surcharge(
    req: HoaiFeeRequest, zone: Zone, out: HoaiFee, words: dict[str, str]
) -> Decimal | None:
    if req.conversion is None:
        return None
    agreed = req.conversion.surcharge_pct
    if agreed is not None:
        pct = Decimal(str(agreed))
        if pct > _SURCHARGE_NAMED[req.kind]:
            out.notes.append(words["above_named"].format(pct=_pct(_SURCHARGE_NAMED[req.kind])))
        return pct
    if ZONES.index(zone) < ZONES.index("III"):
        out.notes.append(words["no_default_surcharge"])
        return None
    return _DEFAULT_SURCHARGE


def _line(out: HoaiFee, label: str, amount: Decimal, basis: str, detail: str = "") -> Decimal:
    """Add a line of `amount` rounded to the cent; return the rounded amount."""
    cents = _cents(amount)
    out.lines.append(FeeLine(label=label, amount=float(cents), basis=basis, detail=detail))
    return cents


def _shares(req: HoaiFeeRequest, phases: list[int]) -> str:
    column = 1 if req.kind is ObjectKind.BUILDING else 2
    shares = _phase_shares()
    return ", ".join(f"LPH {p} {_pct(shares[p][column])} %" for p in phases)


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


def _eur(amount: Decimal) -> str:
    return f"{amount:,.2f} EUR" if amount != amount.to_integral() else f"{amount:,.0f} EUR"


def _pct(value: Decimal) -> str:
    return f"{value.normalize():f}"


_WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "full": "Full fee (all phases), zone {zone}, {rate}",
        "basis": "base rate",
        "upper": "upper rate",
        "position": "{pct} % of the way from the base to the upper rate",
        "table": "table: base {von}, upper {bis} (rows {rows})",
        "agreed": "Full fee agreed in text form",
        "phases": "Fee for the phases commissioned",
        "conversion": "Conversion surcharge {pct} %",
        "incidental": "Incidental costs {pct} %",
        "vat": "VAT {pct} %",
        "outside": (
            "The eligible costs of {costs} lie outside the HOAI table ({low} to {high}): "
            "the HOAI 2021 gives no fee for them; it must be agreed."
        ),
        "above_named": "The surcharge agreed is above the {pct} % § 36 names for average "
        "difficulty.",
        "no_default_surcharge": "No conversion surcharge: without an agreement the 20 % "
        "applies from average difficulty (zone III) upward (§ 6 Abs. 2).",
    },
    "de": {
        "full": "Honorar für alle Leistungsphasen, Honorarzone {zone}, {rate}",
        "basis": "Basishonorarsatz",
        "upper": "oberer Honorarsatz",
        "position": "{pct} % zwischen Basis- und oberem Honorarsatz",
        "table": "Honorartafel: Basishonorarsatz {von}, oberer Honorarsatz {bis} "
        "(Tafelwerte {rows})",
        "agreed": "In Textform vereinbartes Honorar",
        "phases": "Honorar der beauftragten Leistungsphasen",
        "conversion": "Umbauzuschlag {pct} %",
        "incidental": "Nebenkosten {pct} %",
        "vat": "Umsatzsteuer {pct} %",
        "outside": (
            "Die anrechenbaren Kosten von {costs} liegen außerhalb der Honorartafel "
            "({low} bis {high}): die HOAI 2021 gibt dafür kein Honorar an; es ist frei "
            "zu vereinbaren."
        ),
        "above_named": "Der vereinbarte Zuschlag liegt über den {pct} %, die § 36 für "
        "einen durchschnittlichen Schwierigkeitsgrad nennt.",
        "no_default_surcharge": "Kein Umbauzuschlag: ohne Vereinbarung gilt der Zuschlag "
        "von 20 % erst ab durchschnittlichem Schwierigkeitsgrad (Honorarzone III, § 6 "
        "Abs. 2).",
    },
}
