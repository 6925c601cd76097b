"""The construction analyzer's contract (`llm.v1.construction.*`).

`hoai`: the HOAI fee, computed exactly, then the model's analysis with the fee as fact.
`safety`: a site's risks, measures, PPE and emergency steps, structured by a JSON schema.
`query`: a question classified, enriched, answered, with a confidence and its figures.
`quantities`: a material survey, the quantities of dimensioned elements computed here.
`report`: a Markdown report on a stored project (`projects.put/get/list`), figures ours.
`document`: a PDF, DOCX, text or Markdown document analysed, long ones in parallel parts.
Every result is stored (`construction_analyses`) under an id; the same input again is
answered from the store unless the request says `fresh`. `get` reads one back, `list`
the latest.

Amounts are euros as JSON numbers. A fee is computed line by line, each line rounded to
the cent and the next computed from it, so the lines shown add up; each names the
paragraph of the HOAI 2021 it rests on. Every request takes `language` ("en" or "de")
and is answered in it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.requests import DeadlineMs, Language, Name, Options

__all__ = [
    "ZONES",
    "Analyses",
    "Analysis",
    "AnalysisGet",
    "AnalysisKind",
    "AnalysisList",
    "AnalysisSummary",
    "Asked",
    "Computed",
    "Conversion",
    "DateFound",
    "DeliveryStep",
    "DocumentRequest",
    "DocumentResult",
    "DocumentType",
    "Element",
    "FeeLine",
    "Figure",
    "HoaiFee",
    "HoaiFeeRequest",
    "HoaiRequest",
    "HoaiResult",
    "Incident",
    "MaterialLine",
    "Measure",
    "Milestone",
    "ObjectKind",
    "Project",
    "ProjectGet",
    "ProjectList",
    "ProjectStored",
    "Projects",
    "QualityCheck",
    "QuantitiesRequest",
    "QuantitiesResult",
    "Quantity",
    "QuantitySurvey",
    "QueryContext",
    "QueryRequest",
    "QueryResult",
    "QueryType",
    "ReportRequest",
    "ReportResult",
    "ReportType",
    "Risk",
    "SafetyFindings",
    "SafetyRequest",
    "SafetyResult",
    "Severity",
    "Zone",
]

Zone = Literal["I", "II", "III", "IV", "V"]
ZONES: tuple[Zone, ...] = ("I", "II", "III", "IV", "V")
Euros = Annotated[float, Meta(ge=0, le=1e12)]
Percent = Annotated[float, Meta(ge=0, le=100)]
# A position between the Basishonorarsatz (0) and the oberer Honorarsatz (1).
Position = Annotated[float, Meta(ge=0, le=1)]
Phase = Annotated[int, Meta(ge=1, le=9)]
Points = Annotated[int, Meta(ge=0, le=9)]


class ObjectKind(enum.StrEnum):
    """What is planned: a building (Gebäude) or an interior (Innenraum)."""

    BUILDING = "building"
    INTERIOR = "interior"


class Conversion(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A conversion or modernisation (Umbau, § 36 with § 6 Abs. 2): the surcharge agreed
    in Textform, or none agreed (20 % from average difficulty, Honorarzone III, upward)."""

    surcharge_pct: Percent | None = None


class HoaiFeeRequest(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """The fee of the Objektplanung Gebäude und Innenräume (HOAI 2021, Teil 3 Abschnitt 1).

    Give `zone`, or `points`: the evaluation points per criterion (1-6) that decide it
    (§ 35 Abs. 4-6). `rate` is `basis` (the Basishonorarsatz, the default without an
    agreement), `upper` (the oberer Honorarsatz) or a position 0..1 between them;
    `agreed_fee` is a full fee agreed in Textform (§ 7 Abs. 1), used instead of the
    table's. `phases` are the Leistungsphasen commissioned (default: all nine).
    """

    kind: ObjectKind = ObjectKind.BUILDING
    eligible_costs: Euros
    zone: Zone | None = None
    points: dict[Annotated[int, Meta(ge=1, le=6)], Points] | None = None
    phases: Annotated[list[Phase], Meta(min_length=1, max_length=9)] = msgspec.field(
        default_factory=lambda: list(range(1, 10))
    )
    rate: Literal["basis", "upper"] | Position = "basis"
    agreed_fee: Euros | None = None
    conversion: Conversion | None = None
    incidental_costs_pct: Percent = 0.0
    vat_pct: Percent = 19.0
    language: Language = "en"


class FeeLine(Struct, kw_only=True, omit_defaults=True):
    """One line of the calculation: what it is, its amount, the rule it rests on."""

    label: str
    amount: float
    basis: str
    detail: str = ""


class HoaiFee(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="hoai_fee"):
    """The fee, line by line; `in_table` false when the costs lie outside the § 35 table
    (and no fee was agreed): then there is no HOAI figure, only `notes` saying so."""

    kind: ObjectKind
    eligible_costs: float
    zone: Zone
    points_total: int | None = None
    phases: list[int]
    phase_share_pct: float
    in_table: bool
    lines: list[FeeLine] = []
    net: float | None = None
    vat: float | None = None
    gross: float | None = None
    notes: list[str] = []


class AnalysisKind(enum.StrEnum):
    """What a stored analysis answered."""

    HOAI = "hoai"
    SAFETY = "safety"
    QUERY = "query"
    QUANTITIES = "quantities"
    REPORT = "report"
    DOCUMENT = "document"


class DocumentType(enum.StrEnum):
    """What a document is analysed for."""

    COMPLIANCE = "compliance"
    COST = "cost"
    SCHEDULE = "schedule"
    RISK = "risk"


class QueryType(enum.StrEnum):
    """What a question is about; each has its model and temperature."""

    TECHNICAL = "technical"
    SAFETY = "safety"
    COMPLIANCE = "compliance"
    FINANCIAL = "financial"
    SCHEDULE = "schedule"
    GENERAL = "general"


ProjectId = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_.-]{1,64}\Z")]
AnalysisId = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_-]{1,64}\Z")]


class Asked(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a verb's request has beside its input: the answer's language, the project it
    belongs to, the role (or model) that writes, options for its model calls, its
    deadline, and whether to analyse again even if the same input was answered."""

    language: Language = "en"
    project_id: ProjectId | None = None
    role: Name = "primary"
    options: Options | None = None
    deadline_ms: DeadlineMs | None = None
    fresh: bool = False


class HoaiRequest(HoaiFeeRequest, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.hoai`: the fee, then (unless `analysis` is false) the model's analysis
    of the phases commissioned, from the prompt store's `hoai_analysis_template`."""

    project_type: Annotated[str, Meta(max_length=200)] = ""
    area_m2: Annotated[float, Meta(gt=0, le=1e8)] | None = None
    project_id: ProjectId | None = None
    analysis: bool = True
    # The role or model that writes the analysis.
    role: Name = "primary"
    options: Options | None = None
    deadline_ms: DeadlineMs | None = None
    # Analyse again even if the same input was answered before.
    fresh: bool = False


class Analysis(Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """What every verb's result has: its id, the model's text and who wrote it, how long
    it took; `stored` when it came from the store (the same input was answered before, at
    `created_at`)."""

    analysis_id: str = ""
    text: str = ""
    model: str = ""
    host: str = ""
    duration_ms: float = 0.0
    stored: bool = False
    created_at: float = 0.0


class HoaiResult(Analysis, kw_only=True, omit_defaults=True, tag="hoai_result"):
    """The fee and the analysis."""

    fee: HoaiFee


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


Item = Annotated[str, Meta(max_length=2000)]


class SafetyRequest(Asked, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.safety`: a site's safety analysis, from the prompt store's
    `safety_check_template`."""

    conditions: dict[str, Item | float | bool] | Item = ""
    workers: Annotated[int, Meta(ge=0, le=100_000)] = 0
    equipment: Annotated[list[Item], Meta(max_length=200)] = []
    hazards: Annotated[list[Item], Meta(max_length=200)] = []


class Risk(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """A hazard on site; `severity` and `likelihood` are unknown (null) when the model's
    answer was text that did not say."""

    hazard: Item
    severity: Severity | None = None
    likelihood: Annotated[str, Meta(max_length=200)] | None = None
    affected: Annotated[str, Meta(max_length=500)] | None = None


class Measure(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What to do about a risk (`risk`: its hazard; empty when the text did not say)."""

    risk: Item = ""
    measure: Item


class SafetyFindings(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The structured part of a safety analysis: what the model is asked to answer."""

    risks: Annotated[list[Risk], Meta(max_length=200)] = []
    measures: Annotated[list[Measure], Meta(max_length=400)] = []
    ppe: Annotated[list[Item], Meta(max_length=100)] = []
    emergency: Annotated[list[Item], Meta(max_length=100)] = []


class SafetyResult(Analysis, kw_only=True, omit_defaults=True, tag="safety_result"):
    """The findings and the model's whole text; `structured` false when the model ignored
    the JSON schema and the findings were read from its text's sections."""

    findings: SafetyFindings
    structured: bool = True


Metres = Annotated[float, Meta(gt=0, le=100_000)]


class Element(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A building element as specified: what it is, its material, its dimensions in
    metres (length, width, height or thickness), how many."""

    element: Annotated[str, Meta(min_length=1, max_length=200)]
    material: Annotated[str, Meta(max_length=200)] = ""
    length_m: Metres | None = None
    width_m: Metres | None = None
    height_m: Metres | None = None
    count: Annotated[int, Meta(ge=1, le=100_000)] = 1


class QuantitiesRequest(Asked, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.quantities`: a material list, waste allowances, a cost estimate and a
    delivery plan from `specifications`, free text or elements with dimensions (whose
    quantities are computed here and checked against the model's)."""

    specifications: (
        Annotated[str, Meta(min_length=1, max_length=50_000)]
        | Annotated[list[Element], Meta(min_length=1, max_length=500)]
    )


class MaterialLine(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One material of the survey (the model's)."""

    material: Item
    quantity: Annotated[float, Meta(ge=0)]
    unit: Annotated[str, Meta(max_length=20)]
    waste_pct: Annotated[float, Meta(ge=0, le=100)] = 0.0
    unit_cost_eur: Annotated[float, Meta(ge=0)] | None = None
    cost_eur: Annotated[float, Meta(ge=0)] | None = None


class DeliveryStep(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    when: Item
    what: Item


class QuantitySurvey(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """What the model is asked to answer: materials, the total cost, the deliveries."""

    materials: Annotated[list[MaterialLine], Meta(max_length=500)] = []
    total_cost_eur: Annotated[float, Meta(ge=0)] | None = None
    delivery: Annotated[list[DeliveryStep], Meta(max_length=200)] = []


class Computed(Struct, kw_only=True, omit_defaults=True):
    """An element's quantity computed from its dimensions, and the model's for the same
    material and unit: `agrees` when they differ by at most 5 %."""

    element: str
    material: str = ""
    quantity: float
    unit: str
    formula: str
    model_quantity: float | None = None
    deviation_pct: float | None = None
    agrees: bool | None = None


class QuantitiesResult(Analysis, kw_only=True, omit_defaults=True, tag="quantities_result"):
    """The survey (`structured` false when the model ignored the schema: then empty, its
    text kept) and the quantities computed here."""

    survey: QuantitySurvey
    structured: bool = True
    computed: list[Computed] = []


IsoDate = Annotated[str, Meta(pattern=r"\A\d{4}-\d{2}-\d{2}\Z")]
Amount = Annotated[float, Meta(ge=0, le=1e12)]


class Milestone(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    name: Item
    planned: IsoDate
    actual: IsoDate | None = None


class Incident(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    date: IsoDate
    kind: Annotated[str, Meta(max_length=100)] = "incident"
    description: Item = ""
    lost_days: Annotated[float, Meta(ge=0, le=10_000)] = 0.0


class QualityCheck(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    date: IsoDate
    item: Item
    passed: bool
    note: Item = ""


class Project(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A construction project as reports see it; `extra` holds anything else."""

    project_id: ProjectId
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    phase: Annotated[int, Meta(ge=1, le=9)] | None = None
    budget_eur: Amount | None = None
    area_m2: Annotated[float, Meta(gt=0, le=1e8)] | None = None
    costs_to_date_eur: Amount | None = None
    start: IsoDate | None = None
    end: IsoDate | None = None
    hours_worked: Annotated[float, Meta(ge=0, le=1e10)] | None = None
    milestones: Annotated[list[Milestone], Meta(max_length=1000)] = []
    incidents: Annotated[list[Incident], Meta(max_length=10_000)] = []
    quality_checks: Annotated[list[QualityCheck], Meta(max_length=10_000)] = []
    extra: dict[Annotated[str, Meta(max_length=200)], Any] = {}


class ProjectStored(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="project"):
    """A stored project, as `projects.put` and `projects.get` answer."""

    project: Project
    created_at: float
    updated_at: float


class ProjectGet(Struct, kw_only=True, forbid_unknown_fields=True):
    project_id: ProjectId


class ProjectList(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    limit: Annotated[int, Meta(ge=1, le=500)] = 20


class Projects(Struct, kw_only=True, tag_field="type", tag="projects"):
    projects: list[ProjectStored]


class ReportType(enum.StrEnum):
    PROGRESS = "progress"
    SAFETY = "safety"
    FINANCIAL = "financial"
    QUALITY = "quality"


class ReportRequest(Asked, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.report`: a Markdown report on a stored project, its figures computed
    here as of `as_of` (default: today), the prose by the model."""

    project_id: ProjectId
    type: ReportType
    as_of: IsoDate | None = None


class Figure(Struct, kw_only=True, omit_defaults=True):
    """One computed figure of a report."""

    name: str
    value: float | str
    unit: str = ""


class ReportResult(Analysis, kw_only=True, omit_defaults=True, tag="report_result"):
    """The report: `markdown` (figures in tables, then the model's assessment), the
    figures themselves, and what they are as of."""

    project_id: str
    report_type: ReportType
    as_of: str
    figures: list[Figure] = []
    markdown: str = ""


ObjectName = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_.-]{1,128}\Z")]


class DocumentRequest(Asked, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.document`: a document analysed for `analysis_type`. The document is
    `text`, or its bytes in `content` (base64 on the wire), or, when larger than the
    payload limit, the name of an object in the documents object store (`object`; the SDK
    and the CLI put it there). `format` is taken from `filename` or the bytes if unset."""

    analysis_type: DocumentType
    text: Annotated[str, Meta(max_length=8_000_000)] | None = None
    content: bytes | None = None
    object: ObjectName | None = None
    filename: Annotated[str, Meta(max_length=255)] = ""
    format: Literal["pdf", "docx", "txt", "md"] | None = None


class DocumentResult(Analysis, kw_only=True, omit_defaults=True, tag="document_result"):
    """The analysis (`text`), combined from the analyses of the parts a long document was
    split into (each one call, spread over the fleet), and what was read."""

    analysis_type: DocumentType
    format: str
    pages: int
    characters: int
    parts: int
    part_analyses: list[str] = []


class Quantity(Struct, kw_only=True, omit_defaults=True):
    """A figure found in a text: as written, its value, its unit (EUR, m2, m3, t, kg, m,
    km, cm, mm, %, hours, days, weeks, months)."""

    text: str
    value: float
    unit: str


class DateFound(Struct, kw_only=True, omit_defaults=True):
    """A date found in a text: as written, and as an ISO date (a week: its Monday)."""

    text: str
    date: str


class QueryContext(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a question is asked in: the project's HOAI phase, the regulations that apply,
    facts about the project; the model is given them with the question."""

    phase: Annotated[int, Meta(ge=1, le=9)] | None = None
    regulations: Annotated[list[Item], Meta(max_length=50)] = []
    facts: dict[Annotated[str, Meta(max_length=200)], Item | float] = {}


class QueryRequest(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.query`: a question, classified, enriched, answered by the model and
    temperature its type calls for, with a confidence and, for financial and schedule
    answers, the figures and dates in them."""

    query: Annotated[str, Meta(min_length=1, max_length=20_000)]
    context: QueryContext | None = None
    language: Language = "en"
    project_id: ProjectId | None = None
    options: Options | None = None
    deadline_ms: DeadlineMs | None = None
    fresh: bool = False


class QueryResult(Analysis, kw_only=True, omit_defaults=True, tag="query_result"):
    """The answer, its type (`classified` false when the classifier's answer was not one
    of the types: then `general`), a confidence 0..1 and the markers that moved it, and
    the figures and dates of a financial or schedule answer."""

    query_type: QueryType
    classified: bool = True
    confidence: float = 0.0
    markers: list[str] = []
    quantities: list[Quantity] = []
    dates: list[DateFound] = []


class AnalysisGet(Struct, kw_only=True, forbid_unknown_fields=True):
    """`construction.get`: one stored analysis, as its verb answered it."""

    analysis_id: AnalysisId


class AnalysisList(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """`construction.list`: the latest analyses, of one kind or project if given."""

    kind: AnalysisKind | None = None
    project_id: ProjectId | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 20


class AnalysisSummary(Struct, kw_only=True, omit_defaults=True):
    """One line of `construction.list`."""

    analysis_id: str
    kind: AnalysisKind
    project_id: str | None = None
    model: str = ""
    duration_ms: float = 0.0
    created_at: float = 0.0


class Analyses(Struct, kw_only=True, tag_field="type", tag="analyses"):
    """The answer of `construction.list`."""

    analyses: list[AnalysisSummary]
