"""A document's text: PDF (pypdf), DOCX (python-docx), plain text and Markdown; the parts
a long text is split into, each small enough for one model call; and their analysis: every
part at once (the fleet spreads the calls over its hosts), then the part analyses
combined, in groups of `GROUP` and then the groups' results when there are many.

What cannot be read is a typed `bad_request` that says why (a corrupt or encrypted PDF,
one with no text layer, a file that is no DOCX), never a traceback.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from dataclasses import dataclass

import docx
import pypdf
import pypdf.errors

from bus.client import Client
from bus.errors import BadRequest, OllameshError
from schemas import GenerateResult
from schemas.construction import DocumentRequest, DocumentType
from schemas.requests import Language

__all__ = ["GROUP", "PART_CHARS", "Text", "analyse", "extract", "split"]

# A part of this many characters (about 1,500 tokens) leaves room in a 4,096-token context
# for the instructions and the answer.
PART_CHARS = 6000
_FORMATS = ("pdf", "docx", "txt", "md")


@dataclass(frozen=True)
class Text:
    """What was read: the text, its format, and its pages (PDF) or paragraphs."""

    text: str
    format: str
    pages: int


def _format(data: bytes, filename: str, declared: str | None) -> str:
    if declared is not None:
        return declared
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix in _FORMATS or suffix == "markdown":
        return "md" if suffix == "markdown" else suffix
    if data.startswith(b"%PDF"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return "docx"
    return "txt"


def extract(data: bytes, filename: str = "", declared: str | None = None) -> Text:
    """The text of a document of `declared` format (else the file name's, else its
    first bytes')."""
    kind = _format(data, filename, declared)
    if kind == "pdf":
        return _pdf(data)
    if kind == "docx":
        return _docx(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(f"{filename or 'the document'} is not UTF-8 text") from None
    if "\x00" in text:
        raise BadRequest(f"{filename or 'the document'} is binary, not text")
    return Text(text=text, format=kind, pages=text.count("\f") + 1)


def _pdf(data: bytes) -> Text:
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadRequest("the PDF is encrypted: send it without a password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except BadRequest:
        raise
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise BadRequest(f"not a readable PDF: {exc}") from None
    if not any(p.strip() for p in pages):
        raise BadRequest(
            f"the PDF has no text layer ({len(pages)} pages of images?): run OCR first"
        )
    return Text(text="\n\f".join(pages), format="pdf", pages=len(pages))


def _docx(data: bytes) -> Text:
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise BadRequest(f"not a readable DOCX: {exc}") from None
    lines = [p.text for p in document.paragraphs]
    for table in document.tables:
        lines += [" | ".join(cell.text for cell in row.cells) for row in table.rows]
    text = "\n".join(lines)
    if not text.strip():
        raise BadRequest("the DOCX has no text")
    return Text(text=text, format="docx", pages=len(document.paragraphs))


def split(text: str, limit: int = PART_CHARS) -> list[str]:
    """`text` in parts of at most `limit` characters, cut at a page, paragraph, line or
    sentence end where the second half of a part has one, else where the limit falls."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[:limit]
        # The strongest end (page, paragraph, line, sentence) in the window's second half.
        ends = (window.rfind(mark) for mark in ("\f", "\n\n", "\n", ". "))
        cut = next((end + 1 for end in ends if end > limit // 2), limit)
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return parts


# At most this many analyses are combined in one call (each cut to _COMBINED_CHARS).
GROUP = 8
_COMBINED_CHARS = 1500
_FOCUS: dict[Language, dict[DocumentType, str]] = {
    "en": {
        DocumentType.COMPLIANCE: "the requirements and regulations it names (DIN, HOAI, "
        "building codes) and whether they are met",
        DocumentType.COST: "costs, quantities and prices, and the risks to them",
        DocumentType.SCHEDULE: "dates, durations, milestones, dependencies and delays",
        DocumentType.RISK: "technical, safety, contractual and financial risks and how "
        "severe they are",
    },
    "de": {
        DocumentType.COMPLIANCE: "die genannten Anforderungen und Vorschriften (DIN, HOAI, "
        "Bauordnung) und ob sie eingehalten sind",
        DocumentType.COST: "Kosten, Mengen und Preise und die Risiken dafür",
        DocumentType.SCHEDULE: "Termine, Dauern, Meilensteine, Abhängigkeiten und Verzüge",
        DocumentType.RISK: "technische, Sicherheits-, Vertrags- und Finanzrisiken und wie "
        "schwer sie wiegen",
    },
}
_WORDS: dict[Language, dict[str, str]] = {
    "en": {
        "part": "Analyse part {i} of {n} of a construction document for {focus}. List the "
        "findings, each with the place in the text it comes from.\n\n---\n{text}",
        "combine": "Combine these analyses of parts of one construction document into one "
        "analysis of {focus}: merge what repeats, keep every distinct finding.\n\n{parts}",
        "label": "Part {i}",
        "answer_in": "Answer in English.",
    },
    "de": {
        "part": "Analysiere Teil {i} von {n} eines Baudokuments auf {focus}. Nenne die "
        "Befunde, jeden mit der Textstelle, aus der er stammt.\n\n---\n{text}",
        "combine": "Fasse diese Analysen von Teilen eines Baudokuments zu einer Analyse "
        "zusammen ({focus}): Wiederholtes zusammenführen, jeden eigenen Befund behalten."
        "\n\n{parts}",
        "label": "Teil {i}",
        "answer_in": "Antworte auf Deutsch.",
    },
}


async def analyse(
    client: Client, req: DocumentRequest, parts: list[str]
) -> tuple[GenerateResult, list[str]]:
    """Every part analysed at once, then combined; the last call's result and the parts'
    analyses. A part whose call fails ends it with the part's number in the error."""
    words, focus = _WORDS[req.language], _FOCUS[req.language][req.analysis_type]
    prompts = [
        words["part"].format(i=i, n=len(parts), focus=focus, text=part)
        for i, part in enumerate(parts, 1)
    ]
    answers = await _all(client, req, prompts, "part")
    if len(answers) == 1:
        return answers[0], [answers[0].response]
    texts = [a.response for a in answers]
    level = texts
    while True:
        groups = [level[i : i + GROUP] for i in range(0, len(level), GROUP)]
        combined = await _all(
            client, req, [_combine(words, focus, g) for g in groups], "combination"
        )
        if len(combined) == 1:
            return combined[0], texts
        level = [c.response for c in combined]


def _combine(words: dict[str, str], focus: str, analyses: list[str]) -> str:
    parts = "\n\n".join(
        f"{words['label'].format(i=i)}:\n{_cut(text)}" for i, text in enumerate(analyses, 1)
    )
    return words["combine"].format(focus=focus, parts=parts)


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _COMBINED_CHARS else text[: _COMBINED_CHARS - 6] + " [...]"


async def _all(
    client: Client, req: DocumentRequest, prompts: list[str], what: str
) -> list[GenerateResult]:
    """One call per prompt, all at once; a failure names the call (the others are left
    to finish: each is bounded by the request's deadline or the fleet's timeouts)."""
    results = await asyncio.gather(
        *(
            client.generate(
                req.role,
                prompt,
                system=_WORDS[req.language]["answer_in"],
                options=req.options,
                deadline_ms=req.deadline_ms,
                stream=False,
            )
            for prompt in prompts
        ),
        return_exceptions=True,
    )
    for i, result in enumerate(results, 1):
        if isinstance(result, OllameshError):
            raise type(result)(
                f"{what} {i} of {len(prompts)} failed: {result.message}",
                retryable=result.retryable,
            ) from result
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
