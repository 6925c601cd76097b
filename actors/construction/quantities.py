"""`construction.quantities`: a material survey, with what can be computed computed here.

An element given with its dimensions has its quantity worked out exactly (length x width
x height: m³; length x width: m²; a length: m; times the count) and told to the model as
fact; the model's survey (materials with quantities, waste, costs, a delivery plan) is
asked for as JSON following its schema, validated, and each computed quantity is checked
against the model's for the same material and unit.
"""

from __future__ import annotations

import json

import msgspec

from bus.client import Client
from schemas import GenerateResult
from schemas.construction import (
    Computed,
    Element,
    QuantitiesRequest,
    QuantitySurvey,
)
from schemas.requests import Language

__all__ = ["SCHEMA", "TEMPLATE", "analyse", "check", "compute", "read_survey"]

TEMPLATE = "quantity_survey_template"
SCHEMA = msgspec.json.schema(QuantitySurvey)
# The most a model's quantity may differ from ours and still agree.
AGREE_PCT = 5.0
_decode = msgspec.json.Decoder(QuantitySurvey).decode
_WORDS: dict[Language, tuple[str, str]] = {
    "en": (
        "Quantities computed exactly from the given dimensions (use them as they are):",
        "Answer in English, as JSON with materials (material, quantity, unit, waste_pct, "
        "unit_cost_eur, cost_eur), total_cost_eur and delivery (when, what).",
    ),
    "de": (
        "Aus den angegebenen Maßen exakt berechnete Mengen (unverändert übernehmen):",
        "Antworte auf Deutsch, als JSON mit materials (material, quantity, unit, "
        "waste_pct, unit_cost_eur, cost_eur), total_cost_eur und delivery (when, what).",
    ),
}


def compute(element: Element) -> Computed | None:
    """The element's quantity from its dimensions; None if it has none."""
    dims = [d for d in (element.length_m, element.width_m, element.height_m) if d is not None]
    if not dims or element.length_m is None or (element.height_m and not element.width_m):
        return None  # a height without a width (or no length) is no shape to compute
    unit = ("m", "m2", "m3")[len(dims) - 1]
    quantity = element.count
    for d in dims:
        quantity *= d  # type: ignore[assignment]
    formula = " x ".join(f"{d:g} m" for d in dims) + (
        f" x {element.count}" if element.count > 1 else ""
    )
    return Computed(
        element=element.element, material=element.material, quantity=round(quantity, 6),
        unit=unit, formula=formula,
    )  # fmt: skip


def read_survey(text: str) -> tuple[QuantitySurvey, bool]:
    """The survey in a model's answer, and whether it was the JSON asked for."""
    try:
        return _decode(text.strip()), True
    except (msgspec.DecodeError, msgspec.ValidationError):
        return QuantitySurvey(), False


def _unit(unit: str) -> str:
    return unit.strip().lower().replace("²", "2").replace("³", "3").replace("qm", "m2")


def check(computed: Computed, survey: QuantitySurvey) -> Computed:
    """`computed` with the model's quantity for its material and unit, and whether the
    two agree; unchanged when the survey has no such line."""
    wanted = computed.material.strip().lower() or computed.element.strip().lower()
    for line in survey.materials:
        name = line.material.strip().lower()
        if _unit(line.unit) != computed.unit or not (wanted in name or name in wanted):
            continue
        deviation = round((line.quantity - computed.quantity) / computed.quantity * 100, 2)
        return msgspec.structs.replace(
            computed, model_quantity=line.quantity, deviation_pct=deviation,
            agrees=abs(deviation) <= AGREE_PCT,
        )  # fmt: skip
    return computed


def _specifications(req: QuantitiesRequest) -> str:
    if isinstance(req.specifications, str):
        return req.specifications
    return json.dumps(msgspec.to_builtins(req.specifications), ensure_ascii=False)


async def analyse(
    client: Client, req: QuantitiesRequest, computed: list[Computed]
) -> GenerateResult:
    """Ask for the survey, from the prompt store's template, with our quantities as fact."""
    intro, answer_in = _WORDS[req.language]
    facts = [f"- {c.element} ({c.material or '-'}): {c.formula} = {c.quantity:g} {c.unit}"
             for c in computed]  # fmt: skip
    system = "\n".join([intro, *facts, answer_in] if facts else [answer_in])
    return await client.generate(
        req.role,
        prompt_template=TEMPLATE,
        variables={"specifications": _specifications(req)},
        system=system,
        format=SCHEMA,
        options=req.options,
        deadline_ms=req.deadline_ms,
        stream=False,
    )
