"""`construction.hoai`: the fee computed exactly, then the model's analysis of the phases
commissioned, with the fee given to it as fact (it writes prose around the figures, it
never works them out)."""

from __future__ import annotations

from bus.client import Client
from schemas import GenerateResult
from schemas.construction import HoaiFee, HoaiRequest
from schemas.requests import Language

__all__ = ["TEMPLATE", "analyse", "facts"]

TEMPLATE = "hoai_analysis_template"

_WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "intro": "Figures computed exactly from the HOAI 2021 (use them as they are and "
        "compute no other fee):",
        "net": "Net fee: {net:,.2f} EUR; VAT {vat:,.2f} EUR; gross {gross:,.2f} EUR.",
        "answer": "Answer in English.",
        "unknown": "not given",
        "building": "building",
        "interior": "interior",
    },
    "de": {
        "intro": "Nach HOAI 2021 exakt berechnete Zahlen (unverändert übernehmen, kein "
        "anderes Honorar berechnen):",
        "net": "Nettohonorar: {net:,.2f} EUR; Umsatzsteuer {vat:,.2f} EUR; brutto "
        "{gross:,.2f} EUR.",
        "answer": "Antworte auf Deutsch.",
        "unknown": "nicht angegeben",
        "building": "Gebäude",
        "interior": "Innenraum",
    },
}


def facts(fee: HoaiFee, language: Language) -> str:
    """The fee as the model is told it: every line with its paragraph, the totals, the
    notes (an out-of-table case says the fee must be agreed), and the answer's language."""
    words = _WORDS[language]
    lines = [words["intro"]]
    lines += [f"- {line.label}: {line.amount:,.2f} EUR ({line.basis})" for line in fee.lines]
    if fee.net is not None:
        lines.append(words["net"].format(net=fee.net, vat=fee.vat, gross=fee.gross))
    lines += [f"- {note}" for note in fee.notes]
    lines.append(words["answer"])
    return "\n".join(lines)


async def analyse(client: Client, req: HoaiRequest, fee: HoaiFee) -> GenerateResult:
    """The model's analysis, from the prompt store's template, with the fee as fact."""
    words = _WORDS[req.language]
    variables = {
        "phase": ", ".join(str(p) for p in fee.phases),
        "projectType": req.project_type or words[req.kind.value],
        "budget": f"{req.eligible_costs:,.2f}",
        "area": f"{req.area_m2:,.0f}" if req.area_m2 is not None else words["unknown"],
    }
    return await client.generate(
        req.role,
        prompt_template=TEMPLATE,
        variables=variables,
        system=facts(fee, req.language),
        options=req.options,
        deadline_ms=req.deadline_ms,
        stream=False,
    )
