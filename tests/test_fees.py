"""The HOAI 2021 fee: every table point, the worked interpolations, the phase shares,
zones by points at every band edge, surcharges, incidentals, VAT, and costs outside the
table, checked against the regulation's own figures (`../shared/hoai/`, copied into
`actors/construction/data/`)."""

from __future__ import annotations

import csv
import itertools
import re
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from actors.construction.fees import hoai_fee, phase_share, table_fee, zone_by_points
from bus.errors import BadRequest
from schemas.construction import Conversion, HoaiFeeRequest, ObjectKind

DATA = Path(__file__).parent.parent / "actors" / "construction" / "data"
TABLE = list(csv.DictReader((DATA / "honorartafel_35.csv").read_text().splitlines()))


def request(**fields: object) -> HoaiFeeRequest:
    """A request as a client would send it (decoded, so the schema's checks apply)."""
    return msgspec.json.decode(msgspec.json.encode(fields), type=HoaiFeeRequest)


def test_the_table_has_twenty_rows_of_five_zones_that_meet() -> None:
    """20 rows from 25,000 to 25,000,000 EUR; in every row a zone's upper rate is the next
    zone's base rate (a check of the copied data itself)."""
    costs = sorted({int(r["anrechenbare_kosten"]) for r in TABLE})
    assert len(costs) == 20 and costs[0] == 25_000 and costs[-1] == 25_000_000
    for k in costs:
        row = [r for r in TABLE if int(r["anrechenbare_kosten"]) == k]
        assert [r["zone"] for r in row] == ["I", "II", "III", "IV", "V"]
        assert all(a["bis"] == b["von"] for a, b in itertools.pairwise(row))


@pytest.mark.parametrize("row", TABLE, ids=lambda r: f"{r['anrechenbare_kosten']}-{r['zone']}")
def test_every_table_point_is_the_regulation_s(row: dict[str, str]) -> None:
    """At a row's costs the fee is the table's value exactly: base and upper rate."""
    found = table_fee(Decimal(row["anrechenbare_kosten"]), row["zone"])  # type: ignore[arg-type]
    assert found is not None
    assert found[:2] == (Decimal(row["von"]), Decimal(row["bis"]))


@pytest.mark.parametrize(
    ("costs", "zone", "von", "bis"),
    [
        pytest.param(400_000, "III", "51440.50", "64156.50", id="400k-III"),
        pytest.param(1_200_000, "IV", "169330.00", "190687.20", id="1.2M-IV"),
    ],
)
def test_the_worked_interpolations_of_section_13(costs: int, zone: str, von: str, bis: str) -> None:
    """§ 13: linear between rows, the two worked checks of the shared notes, to the cent."""
    req = request(eligible_costs=costs, zone=zone, vat_pct=0)
    assert hoai_fee(req).lines[0].amount == float(von)
    upper = request(eligible_costs=costs, zone=zone, rate="upper", vat_pct=0)
    assert hoai_fee(upper).lines[0].amount == float(bis)


def test_a_position_between_the_rates_interpolates_between_them() -> None:
    """`rate: 0.5` at 400,000 EUR, zone III: halfway between 51,440.50 and 64,156.50."""
    fee = hoai_fee(request(eligible_costs=400_000, zone="III", rate=0.5))
    assert fee.lines[0].amount == 57798.50


@pytest.mark.parametrize(
    ("kind", "shares"),
    [
        pytest.param(ObjectKind.BUILDING, [2, 7, 15, 3, 25, 10, 4, 32, 2], id="buildings"),
        pytest.param(ObjectKind.INTERIOR, [2, 7, 15, 2, 30, 7, 3, 32, 2], id="interiors"),
    ],
)
def test_the_phase_shares_of_section_34(kind: ObjectKind, shares: list[int]) -> None:
    """Each Leistungsphase's share, and all nine make 100 %."""
    assert [phase_share(kind, [p]) for p in range(1, 10)] == [Decimal(s) for s in shares]
    assert phase_share(kind, list(range(1, 10))) == 100


BUILDING_MAX = {1: 6, 2: 9, 3: 9, 4: 6, 5: 6, 6: 6}
INTERIOR_MAX = {1: 6, 2: 6, 3: 6, 4: 6, 5: 9, 6: 9}


def _points(maxima: dict[int, int], total: int) -> dict[int, int]:
    """Points per criterion, within each criterion's maximum, adding up to `total`."""
    out, left = {}, total
    for criterion, most in maxima.items():
        out[criterion] = min(most, left)
        left -= out[criterion]
    assert left == 0
    return out


@pytest.mark.parametrize("kind", [ObjectKind.BUILDING, ObjectKind.INTERIOR])
@pytest.mark.parametrize(
    ("total", "zone"),
    [
        (0, "I"),
        (10, "I"),
        (11, "II"),
        (18, "II"),
        (19, "III"),
        (26, "III"),
        (27, "IV"),
        (34, "IV"),
        (35, "V"),
        (42, "V"),
    ],
)
def test_the_zone_by_points_at_every_band_edge(kind: ObjectKind, total: int, zone: str) -> None:
    """§ 35 Abs. 4: I up to 10 points, II 11-18, III 19-26, IV 27-34, V 35-42."""
    maxima = BUILDING_MAX if kind is ObjectKind.BUILDING else INTERIOR_MAX
    assert zone_by_points(kind, _points(maxima, total)) == (zone, total)


@pytest.mark.parametrize(
    ("kind", "points", "says"),
    [
        pytest.param(ObjectKind.BUILDING, {1: 6, 2: 9}, "have no points", id="missing"),
        pytest.param(ObjectKind.BUILDING, {**BUILDING_MAX, 1: 7}, "1 (7 > 6)", id="over-1"),
        pytest.param(ObjectKind.INTERIOR, {**INTERIOR_MAX, 2: 9}, "2 (9 > 6)", id="over-2"),
    ],
)
def test_points_out_of_the_rules_are_bad_requests(
    kind: ObjectKind, points: dict[int, int], says: str
) -> None:
    with pytest.raises(BadRequest, match=re.escape(says)):
        zone_by_points(kind, points)


def test_a_whole_fee_line_by_line() -> None:
    """400,000 EUR, zone III, phases 1-4, Umbau without agreement, 5 % incidentals, 19 %
    VAT: 51,440.50 x 27 % = 13,888.94; + 20 % = 2,777.79; + 5 % of 16,666.73 = 833.34;
    net 17,500.07; VAT 3,325.01; gross 20,825.08. Every line names its paragraph."""
    fee = hoai_fee(
        request(
            eligible_costs=400_000, zone="III", phases=[1, 2, 3, 4], conversion={},
            incidental_costs_pct=5,
        )
    )  # fmt: skip
    assert [line.amount for line in fee.lines] == [51440.50, 13888.94, 2777.79, 833.34, 3325.01]
    assert [line.basis for line in fee.lines] == [
        "§ 35 Abs. 1, § 13", "§ 34 Abs. 3", "§ 36, § 6 Abs. 2", "§ 14", "§ 16",
    ]  # fmt: skip
    assert (fee.net, fee.vat, fee.gross) == (17500.07, 3325.01, 20825.08)
    assert fee.phase_share_pct == 27 and fee.in_table and not fee.notes


def test_an_agreed_surcharge_and_an_agreed_fee_are_used() -> None:
    """An agreed conversion surcharge replaces the 20 %; above 33 % for a building it is
    used and noted. An agreed full fee replaces the table's (§ 7 Abs. 1)."""
    fee = hoai_fee(request(eligible_costs=100_000, zone="II", conversion={"surcharge_pct": 40}))
    assert fee.lines[2].amount == round(fee.lines[1].amount * 0.4, 2)
    assert any("33 %" in n for n in fee.notes)
    agreed = hoai_fee(request(eligible_costs=100_000, zone="II", agreed_fee=20_000, phases=[8]))
    assert [line.amount for line in agreed.lines[:2]] == [20_000.0, 6_400.0]
    assert agreed.lines[0].basis == "§ 7 Abs. 1"


def test_no_default_surcharge_below_average_difficulty() -> None:
    """Umbau without an agreement in zone II: no surcharge, and the fee says why."""
    fee = hoai_fee(request(eligible_costs=100_000, zone="II", conversion=Conversion()))
    assert len(fee.lines) == 3 and "zone III" in fee.notes[0]


@pytest.mark.parametrize("costs", [24_999.99, 25_000_000.01, 0, 100_000_000])
def test_costs_outside_the_table_have_no_fee(costs: float) -> None:
    """No clamped or extrapolated figure: no lines, no totals, a note that says the fee
    must be agreed (in the request's language)."""
    fee = hoai_fee(request(eligible_costs=costs, zone="III"))
    assert not fee.in_table and fee.lines == [] and fee.net is None and fee.gross is None
    assert "outside the HOAI table" in fee.notes[0] and "must be agreed" in fee.notes[0]
    de = hoai_fee(request(eligible_costs=costs, zone="III", language="de"))
    assert "außerhalb der Honorartafel" in de.notes[0]


def test_the_table_s_edges_are_inside() -> None:
    """25,000 and 25,000,000 EUR are table rows, not outside."""
    assert hoai_fee(request(eligible_costs=25_000, zone="I", vat_pct=0)).net == 3120
    assert hoai_fee(request(eligible_costs=25_000_000, zone="V", vat_pct=0)).net == 2806395


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        pytest.param({"eligible_costs": 1e5}, "zone", id="no-zone"),
        pytest.param(
            {"eligible_costs": 1e5, "zone": "I", "points": BUILDING_MAX},
            "zone",
            id="zone-and-points",
        ),
        pytest.param(
            {"eligible_costs": 1e5, "zone": "I", "phases": [3, 3]}, "once", id="phase-twice"
        ),
    ],
)
def test_inconsistent_requests_are_bad_requests(fields: dict[str, object], says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        hoai_fee(request(**fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"eligible_costs": -1, "zone": "I"},
        {"eligible_costs": 1e5, "zone": "VI"},
        {"eligible_costs": 1e5, "zone": "I", "phases": [0]},
        {"eligible_costs": 1e5, "zone": "I", "phases": []},
        {"eligible_costs": 1e5, "zone": "I", "rate": 1.5},
        {"eligible_costs": 1e5, "zone": "I", "rate": "lower"},
        {"eligible_costs": 1e5, "zone": "I", "language": "fr"},
        {"eligible_costs": 1e5, "zone": "I", "points": {7: 1}},
    ],
)
def test_the_schema_refuses_values_out_of_range(fields: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        request(**fields)
