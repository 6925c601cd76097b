"""The construction analyzer end to end: the HOAI fee computed exactly and given to the
model as fact, stored and answered again from the store, read back, bad input refused."""

from __future__ import annotations

import json

import pytest

from actors.cli.bench.pdf import pdf
from actors.simulator import Script
from bus.client import Client
from bus.errors import BadRequest
from schemas import Error, decode_reply
from schemas.construction import AnalysisKind, QueryType, Severity

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
CONSTRUCTION = ("router", "executor", "prompts", "construction")
SHORT = {"num_predict": 20}
# The worked case: 400,000 EUR, zone III, phases 1-4, Umbau, 5 % incidentals.
SCHOOL = {
    "zone": "III", "phases": [1, 2, 3, 4], "conversion": {}, "incidental_costs_pct": 5,
    "project_type": "school", "area_m2": 1200, "options": SHORT,
}  # fmt: skip


@pytest.fixture
async def fleet(database_url: str, sim_factory, stack_factory):
    """A router, an executor, the prompt store and an analyzer; one simulated host."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=CONSTRUCTION, database={"url": database_url})
    return sim


async def test_hoai_gives_the_exact_fee_and_an_analysis_told_it_as_fact(
    fleet, client: Client
) -> None:
    """The fee line by line (the figures of the fee tests), then the primary role's
    analysis from the seeded template, whose prompt holds every computed line."""
    result = await client.construction.hoai(400_000, **SCHOOL)
    fee = result.fee
    assert (fee.net, fee.vat, fee.gross) == (17500.07, 3325.01, 20825.08)
    assert result.text and result.model == "qwen2.5:7b" and not result.stored
    (asked,) = list(fleet.engine.stats.prompts)
    assert "13,888.94 EUR (§ 34 Abs. 3)" in asked and "Net fee: 17,500.07 EUR" in asked
    assert "HOAI Phase 1, 2, 3, 4 compliance" in asked and "Project Type: school" in asked
    assert "Budget: 400,000.00 EUR" in asked and "Answer in English." in asked


async def test_the_same_input_is_answered_from_the_store_unless_fresh(
    fleet, client: Client
) -> None:
    """Asked again: the stored result (same id, `stored`), the host not asked again;
    `fresh`: a new analysis."""
    first = await client.construction.hoai(400_000, **SCHOOL)
    again = await client.construction.hoai(400_000, **SCHOOL)
    assert again.stored and again.analysis_id == first.analysis_id and again.text == first.text
    assert fleet.engine.stats.generations == 1
    fresh = await client.construction.hoai(400_000, **SCHOOL, fresh=True)
    assert not fresh.stored and fresh.analysis_id != first.analysis_id
    assert fleet.engine.stats.generations == 2


async def test_german_asks_and_answers_in_german(fleet, client: Client) -> None:
    """`language: "de"`: the lines in German, and the model told to answer in German."""
    result = await client.construction.hoai(400_000, **SCHOOL, language="de")
    assert result.fee.lines[1].label == "Honorar der beauftragten Leistungsphasen"
    (asked,) = list(fleet.engine.stats.prompts)
    assert "Antworte auf Deutsch." in asked and "Umbauzuschlag 20 %" in asked


async def test_costs_outside_the_table_are_said_to_need_an_agreed_fee(
    fleet, client: Client
) -> None:
    """30 million EUR: no figure; the model is told the fee must be agreed."""
    result = await client.construction.hoai(30_000_000, zone="IV", options=SHORT)
    assert not result.fee.in_table and result.fee.net is None and result.fee.lines == []
    (asked,) = list(fleet.engine.stats.prompts)
    assert "must be agreed" in asked


async def test_the_fee_alone_asks_no_model(fleet, client: Client) -> None:
    """`analysis: false`: the fee, stored, and no generation."""
    result = await client.construction.hoai(100_000, zone="II", analysis=False)
    assert result.fee.net == 12644 and result.text == "" and result.model == ""
    assert fleet.engine.stats.generations == 0


async def test_stored_analyses_are_read_back_and_listed(fleet, client: Client) -> None:
    """`get` gives the result as it was answered; `list` the latest, by kind or project."""
    one = await client.construction.hoai(100_000, zone="II", analysis=False, project_id="p-1")
    two = await client.construction.hoai(200_000, zone="II", analysis=False)
    got = await client.construction.get(one.analysis_id)
    assert got.fee == one.fee and got.stored
    listed = await client.construction.list(kind=AnalysisKind.HOAI)
    assert [a.analysis_id for a in listed] == [two.analysis_id, one.analysis_id]
    by_project = await client.construction.list(project_id="p-1")
    assert [a.analysis_id for a in by_project] == [one.analysis_id]
    with pytest.raises(BadRequest, match="no analysis"):
        await client.construction.get("nope")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b"{", "invalid construction.hoai", id="malformed"),
        pytest.param(b'{"eligible_costs": 100000}', "zone", id="no-zone"),
        pytest.param(b'{"eligible_costs": -5, "zone": "I"}', "eligible_costs", id="negative"),
        pytest.param(b'{"eligible_costs": 1e5, "zone": "I", "phases": [2, 2]}', "once",
                     id="phase-twice"),
        pytest.param(b'{"eligible_costs": 1e5, "points": {"1": 7}}', "criteria", id="points"),
        pytest.param(b'{"eligible_costs": 1e5, "zone": "I", "rate": "low"}', "rate",
                     id="rate"),
        pytest.param(b'{"eligible_costs": 1e5, "zone": "I", "colour": "red"}', "colour",
                     id="unknown-field"),
    ],
)  # fmt: skip
async def test_a_bad_hoai_request_is_a_bad_request_and_nothing_is_asked(
    fleet, client: Client, prefix: str, body: bytes, says: str
) -> None:
    reply = await client.nc.request(f"{prefix}.v1.construction.hoai", body, timeout=5)
    error = decode_reply(reply.data)
    assert isinstance(error, Error) and error.code == "bad_request", error
    assert says in error.message
    assert fleet.engine.stats.generations == 0
    assert await client.construction.list() == []


SITE = {
    "conditions": {"weather": "rain", "wind_kmh": 40}, "workers": 12,
    "equipment": ["crane", "scaffold"], "hazards": ["work at height"],
    "options": {"num_predict": 2000},  # room for the whole JSON (a cut one is no JSON)
}  # fmt: skip


async def test_safety_gives_findings_in_the_schema_asked_for(fleet, client: Client) -> None:
    """The simulator follows the JSON schema: structured findings (severities from the
    enum), from the seeded template filled with the site's data."""
    result = await client.construction.safety(**SITE)
    assert result.structured and result.model == "qwen2.5:7b"
    assert all(r.hazard for r in result.findings.risks)
    (asked,) = list(fleet.engine.stats.prompts)
    assert "Workers on site: 12" in asked and "Equipment in use: crane, scaffold" in asked
    assert '"wind_kmh": 40' in asked and "Known hazards: work at height" in asked
    again = await client.construction.safety(**SITE)
    assert again.stored and again.findings == result.findings


async def test_safety_text_that_ignores_the_schema_is_read_by_its_sections(
    fleet, client: Client
) -> None:
    """A model answering in German prose with headings: `structured: false`, the
    findings read from its sections, the whole text kept."""
    text = "Risiken:\n- Absturz (hoch)\nMaßnahmen:\n- Seitenschutz\nPSA:\n- Helm\n"
    fleet.engine.scripts.add(Script(match="Perform safety analysis", text=text))
    result = await client.construction.safety(**SITE, language="de")
    assert not result.structured and result.text == text
    assert [(r.hazard, r.severity) for r in result.findings.risks] == [
        ("Absturz (hoch)", Severity.HIGH)
    ]
    assert [m.measure for m in result.findings.measures] == ["Seitenschutz"]
    assert result.findings.ppe == ["Helm"]
    (asked,) = list(fleet.engine.stats.prompts)
    assert asked.startswith("Antworte auf Deutsch")


@pytest.mark.parametrize(
    "body",
    [b'{"workers": -1}', b'{"equipment": "crane"}', b'{"weather": "rain"}', b"[]"],
)
async def test_a_bad_safety_request_is_a_bad_request(
    fleet, client: Client, prefix: str, body: bytes
) -> None:
    reply = await client.nc.request(f"{prefix}.v1.construction.safety", body, timeout=5)
    error = decode_reply(reply.data)
    assert isinstance(error, Error) and error.code == "bad_request", error
    assert fleet.engine.stats.generations == 0


CLASSIFY = "Classify this construction question"


async def test_a_query_is_classified_by_the_enum_and_answered_with_its_context(
    fleet, client: Client
) -> None:
    """The simulator follows the enum schema: the type is one of the six; the answer's
    prompt holds the context (phase, regulations, facts) before the question."""
    context = {"phase": 5, "regulations": ["DIN 4420"], "facts": {"storeys": 5}}
    result = await client.construction.query(
        "Which scaffold class do we need?", context=context, options=SHORT
    )
    assert result.classified and result.query_type in set(QueryType)
    assert 0.05 <= result.confidence <= 0.95 and result.text
    classify_prompt, asked = list(fleet.engine.stats.prompts)
    assert classify_prompt.startswith(CLASSIFY)
    assert "HOAI phase (Leistungsphase): 5" in asked and "Regulations that apply: DIN 4420" in asked
    assert "storeys: 5" in asked and asked.endswith("Which scaffold class do we need?")


async def test_a_financial_answer_gives_its_figures_and_dates(fleet, client: Client) -> None:
    """Classified `financial` (scripted), answered by `primary` (the tests' fleet has no
    `mathematical` role), with the figures and dates of the answer read out."""
    # The first call (the classifier) gets the type, the second the answer.
    fleet.engine.scripts.add(
        Script(match="What will it cost", text='{"type": "financial"}', count=1)
    )
    answer = "Die Kosten betragen 1.234,56 € je m², insgesamt 2,5 Mio. €, fällig am 3. März 2025."
    fleet.engine.scripts.add(Script(match="What will it cost", text=answer))
    result = await client.construction.query("What will it cost?", language="de")
    assert result.query_type is QueryType.FINANCIAL and result.model == "qwen2.5:7b"
    assert [(q.value, q.unit) for q in result.quantities] == [(1234.56, "EUR"), (2.5e6, "EUR")]
    assert [d.date for d in result.dates] == ["2025-03-03"]
    assert list(fleet.engine.stats.prompts)[1].startswith("Antworte auf Deutsch.")


async def test_a_classifier_answer_outside_the_types_is_general(fleet, client: Client) -> None:
    """A classifier that ignores the enum: `general`, `classified: false`, answered by
    the `fast` role, and no figures read (only financial and schedule answers get them)."""
    fleet.engine.scripts.add(Script(match=CLASSIFY, text='{"type": "legal"}'))
    fleet.engine.scripts.add(Script(match="Who signs", text="The client signs, 120 m²."))
    result = await client.construction.query("Who signs the contract?")
    assert result.query_type is QueryType.GENERAL and not result.classified
    assert result.model == "llama3.2:3b" and result.quantities == []


@pytest.mark.parametrize(
    "body",
    [b'{"query": ""}', b'{"query": "   "}', b'{"query": "x", "context": {"phase": 10}}', b"{}"],
)
async def test_a_bad_query_is_a_bad_request(
    fleet, client: Client, prefix: str, body: bytes
) -> None:
    reply = await client.nc.request(f"{prefix}.v1.construction.query", body, timeout=5)
    error = decode_reply(reply.data)
    assert isinstance(error, Error) and error.code == "bad_request", error
    assert fleet.engine.stats.generations == 0


SLAB = {"element": "floor slab", "material": "concrete C25/30", "length_m": 6,
        "width_m": 4, "height_m": 0.25}  # fmt: skip


async def test_quantities_are_computed_told_to_the_model_and_checked(fleet, client: Client) -> None:
    """A slab of 6 x 4 x 0.25 m: 6 m³ computed here and in the model's prompt; the
    model's survey (scripted: 6.1 m³) validated and checked against it."""
    survey = {
        "materials": [{"material": "Concrete C25/30", "quantity": 6.1, "unit": "m³",
                       "waste_pct": 3, "unit_cost_eur": 140, "cost_eur": 854}],
        "total_cost_eur": 854,
        "delivery": [{"when": "week 2", "what": "ready-mix concrete"}],
    }  # fmt: skip
    fleet.engine.scripts.add(Script(match="Calculate material quantities", text=json.dumps(survey)))
    result = await client.construction.quantities([SLAB])
    assert result.structured and result.survey.total_cost_eur == 854
    (slab,) = result.computed
    assert (slab.quantity, slab.unit, slab.model_quantity, slab.agrees) == (6.0, "m3", 6.1, True)
    assert slab.deviation_pct == 1.67
    (asked,) = list(fleet.engine.stats.prompts)
    assert "floor slab (concrete C25/30): 6 m x 4 m x 0.25 m = 6 m3" in asked
    assert '"length_m": 6' in asked  # the specifications themselves, in the template


async def test_quantities_from_free_text_follow_the_schema(fleet, client: Client) -> None:
    """Free text: nothing to compute; the simulator follows the survey's schema."""
    result = await client.construction.quantities(
        "A 20 m garden wall of clinker brick", options={"num_predict": 2000}
    )
    assert result.structured and result.computed == []


@pytest.mark.parametrize(
    "body",
    [b'{"specifications": ""}', b'{"specifications": "  "}', b'{"specifications": []}',
     b'{"specifications": [{"element": "slab", "length_m": -1}]}', b"{}"],
)  # fmt: skip
async def test_a_bad_quantities_request_is_a_bad_request(
    fleet, client: Client, prefix: str, body: bytes
) -> None:
    reply = await client.nc.request(f"{prefix}.v1.construction.quantities", body, timeout=5)
    error = decode_reply(reply.data)
    assert isinstance(error, Error) and error.code == "bad_request", error
    assert fleet.engine.stats.generations == 0


PROJECT = {
    "project_id": "school-7", "name": "School extension", "budget_eur": 2_000_000,
    "costs_to_date_eur": 900_000, "start": "2025-01-01", "end": "2025-12-31",
}  # fmt: skip


async def test_projects_are_stored_and_reported_on(fleet, client: Client) -> None:
    """A project put, read and listed; a financial report with our figures in its table
    and in the model's prompt; the same report again from the store, a changed project
    a new one."""
    stored = await client.construction.put_project(PROJECT)
    assert stored.project.name == "School extension"
    assert (await client.construction.project("school-7")).project == stored.project
    assert [p.project.project_id for p in await client.construction.projects()] == ["school-7"]
    result = await client.construction.report(
        "school-7", "financial", as_of="2025-07-02", options=SHORT
    )
    assert "| Budget used | 45 % |" in result.markdown and "## Assessment" in result.markdown
    assert result.text and result.text.strip() in result.markdown
    (asked,) = list(fleet.engine.stats.prompts)
    assert "- Cost variance (planned - actual): 100,000 EUR" in asked
    again = await client.construction.report(
        "school-7", "financial", as_of="2025-07-02", options=SHORT
    )
    assert again.stored and again.analysis_id == result.analysis_id
    await client.construction.put_project({**PROJECT, "costs_to_date_eur": 1_100_000})
    changed = await client.construction.report(
        "school-7", "financial", as_of="2025-07-02", options=SHORT
    )
    assert not changed.stored and "| Budget used | 55 % |" in changed.markdown


@pytest.mark.parametrize(
    ("subject", "body", "says"),
    [
        pytest.param("report", b'{"project_id": "nope", "type": "financial"}', "no project",
                     id="unknown-project"),
        pytest.param("report", b'{"project_id": "p", "type": "weather"}', "type", id="type"),
        pytest.param("projects.put", b'{"project_id": "p", "name": "x", "start": "2025-02-30"}',
                     "start", id="impossible-date"),
        pytest.param("projects.put", b'{"project_id": "p w", "name": "x"}', "project_id",
                     id="bad-id"),
        pytest.param("projects.get", b'{"project_id": "nope"}', "no project", id="get-unknown"),
    ],
)  # fmt: skip
async def test_bad_project_and_report_requests_are_bad_requests(
    fleet, client: Client, prefix: str, subject: str, body: bytes, says: str
) -> None:
    reply = await client.nc.request(f"{prefix}.v1.construction.{subject}", body, timeout=5)
    error = decode_reply(reply.data)
    assert isinstance(error, Error) and error.code == "bad_request" and says in error.message
    assert fleet.engine.stats.generations == 0


async def test_a_query_about_a_stored_project_is_given_its_facts(fleet, client: Client) -> None:
    """`project_id` names a stored project: its facts go before the question; an
    unknown one is a bad_request."""
    await client.construction.put_project({**PROJECT, "phase": 8})
    await client.construction.query("Are we on budget?", project_id="school-7", options=SHORT)
    asked = list(fleet.engine.stats.prompts)[1]
    assert "Project: School extension" in asked and "Budget (EUR): 2000000.0" in asked
    assert "Planned: 2025-01-01 - 2025-12-31" in asked
    with pytest.raises(BadRequest, match="no project"):
        await client.construction.query("Are we on budget?", project_id="nope")


async def test_a_short_document_is_analysed_in_one_call(fleet, client: Client) -> None:
    """A text document of one part: one call, whose prompt holds the text and the focus
    of the analysis type; asked again, from the store."""
    spec = "The contractor shall finish the shell by 12.03.2025 (DIN 18202 tolerances)."
    result = await client.construction.document(
        "compliance", data=spec.encode(), filename="spec.txt", options=SHORT
    )
    assert (result.format, result.parts, result.part_analyses) == ("txt", 1, [])
    assert result.text and fleet.engine.stats.generations == 1
    (asked,) = list(fleet.engine.stats.prompts)
    assert spec in asked and "requirements and regulations" in asked
    again = await client.construction.document(
        "compliance", data=spec.encode(), filename="spec.txt", options=SHORT
    )
    assert again.stored and fleet.engine.stats.generations == 1


async def test_a_long_document_is_analysed_in_parallel_parts_then_combined(
    fleet, client: Client
) -> None:
    """20 parts: 20 part calls, then 3 group combinations (8, 8, 4), then one: 24."""
    text = "\n\n".join(f"Section {i}. " + "The crane base needs a check. " * 190 for i in range(20))
    result = await client.construction.document("risk", text=text, options=SHORT)
    assert result.parts == 20 and len(result.part_analyses) == 20
    assert fleet.engine.stats.generations == 24
    prompts = list(fleet.engine.stats.prompts)
    assert sum("\n\nAnalyse part " in p for p in prompts) == 20
    assert sum("\n\nCombine these analyses" in p for p in prompts) == 4


async def test_a_document_over_the_payload_limit_travels_through_the_object_store(
    fleet, client: Client
) -> None:
    """A 7 MB PDF (its base64 over the 8 MB limit): the SDK puts it in the object store,
    the analyzer reads it from there."""
    data = pdf([["The contractor shall finish the shell by 12.03.2025."]], padding=7_000_000)
    assert len(data) * 4 // 3 > client.nc.max_payload
    result = await client.construction.document(
        "schedule", data=data, filename="big.pdf", options=SHORT
    )
    assert (result.format, result.pages, result.parts) == ("pdf", 1, 1)
    (asked,) = list(fleet.engine.stats.prompts)
    assert "finish the shell by 12.03.2025" in asked


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b'{"analysis_type": "legal", "text": "x"}', "analysis_type", id="type"),
        pytest.param(b'{"analysis_type": "cost"}', "once", id="no-document"),
        pytest.param(b'{"analysis_type": "cost", "text": "x", "object": "y"}', "once",
                     id="two-documents"),
        pytest.param(b'{"analysis_type": "cost", "object": "missing"}', "no document",
                     id="unknown-object"),
        pytest.param(b'{"analysis_type": "cost", "content": "JVBERi0xLjQKbm90", '
                     b'"filename": "x.pdf"}', "not a readable PDF", id="corrupt-pdf"),
    ],
)  # fmt: skip
async def test_a_bad_document_request_is_a_bad_request(
    fleet, client: Client, prefix: str, body: bytes, says: str
) -> None:
    reply = await client.nc.request(f"{prefix}.v1.construction.document", body, timeout=10)
    error = decode_reply(reply.data)
    assert isinstance(error, Error) and error.code == "bad_request" and says in error.message
    assert fleet.engine.stats.generations == 0
