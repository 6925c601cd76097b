"""The reasoning coordinator's prompts, kept as templates in the prompt store (so operators
can version them), in English and German; put there at start when missing."""

from __future__ import annotations

from typing import Any

from bus.client import Client
from schemas.requests import Language

__all__ = ["TEMPLATES", "ensure_templates", "results_text", "template_name"]

# (name, language, text, stored parameters). Variables: query and max_steps (decompose);
# query, step and context (step); query and steps (synthesise).
TEMPLATES: tuple[tuple[str, Language, str, dict[str, Any]], ...] = (
    (
        "reasoning_decompose",
        "en",
        """Break the problem below into at most {{max_steps}} steps that can each be worked
out on its own. Answer with JSON only: a list "steps", each with "id" (1, 2, 3, ...),
"text" (what to work out), "depends_on" (the ids of the steps whose results it needs)
and "kind" ("mathematical" for a calculation, else "general").

Problem: {{query}}""",
        {"temperature": 0.2},
    ),
    (
        "reasoning_step",
        "en",
        """You are working out one step of a larger problem.

Problem: {{query}}

Results of the steps it builds on:
{{context}}

Step: {{step}}

Work out this step. Give its result plainly and briefly.""",
        {},
    ),
    (
        "reasoning_synthesise",
        "en",
        """Answer the question from the results of the steps worked out for it.

Question: {{query}}

Steps and their results:
{{steps}}

Give the complete answer.""",
        {},
    ),
    (
        "reasoning_decompose",
        "de",
        """Zerlege das folgende Problem in höchstens {{max_steps}} Schritte, die sich je für
sich lösen lassen. Antworte nur mit JSON: eine Liste "steps", jeder Schritt mit "id"
(1, 2, 3, ...), "text" (was zu ermitteln ist), "depends_on" (die ids der Schritte, deren
Ergebnisse er braucht) und "kind" ("mathematical" für eine Rechnung, sonst "general").

Problem: {{query}}""",
        {"temperature": 0.2},
    ),
    (
        "reasoning_step",
        "de",
        """Du bearbeitest einen Schritt eines größeren Problems.

Problem: {{query}}

Ergebnisse der Schritte, auf denen er aufbaut:
{{context}}

Schritt: {{step}}

Bearbeite diesen Schritt. Nenne sein Ergebnis klar und knapp.""",
        {},
    ),
    (
        "reasoning_synthesise",
        "de",
        """Beantworte die Frage aus den Ergebnissen der dafür bearbeiteten Schritte.

Frage: {{query}}

Schritte und ihre Ergebnisse:
{{steps}}

Gib die vollständige Antwort.""",
        {},
    ),
)


# The words of what the coordinator fills in: (step, result, no results), per language.
_WORDS: dict[Language, tuple[str, str, str]] = {
    "en": ("Step", "Result", "(none: this step stands on its own)"),
    "de": ("Schritt", "Ergebnis", "(keine: dieser Schritt steht für sich)"),
}


def results_text(language: Language, steps: list[tuple[str, str, str]]) -> str:
    """Steps' results as a prompt shows them: `steps` holds (id, text, answer) each."""
    step, result, none = _WORDS[language]
    if not steps:
        return none
    return "\n\n".join(f"{step} {i}: {text}\n{result}: {answer}" for i, text, answer in steps)


def template_name(base: str, language: Language) -> str:
    """The stored name of a template in `language` (English is the plain name)."""
    return base if language == "en" else f"{base}_{language}"


async def ensure_templates(client: Client) -> list[str]:
    """Put every template the prompt store lacks (never a newer version over one an
    operator changed); return the names put."""
    stored = {p.name for p in await client.list_prompts()}
    put = []
    for base, language, text, parameters in TEMPLATES:
        name = template_name(base, language)
        if name not in stored:
            await client.put_prompt(
                name, text, parameters=parameters, description="reasoning coordinator"
            )
            put.append(name)
    return put
