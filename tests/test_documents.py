"""Reading documents: PDF, DOCX, text and Markdown; what cannot be read says why; long
texts split at natural ends."""

from __future__ import annotations

import io

import docx
import pypdf
import pytest

from actors.cli.bench.pdf import pdf
from actors.construction.documents import PART_CHARS, extract, split
from bus.errors import BadRequest

LINES = ["The contractor shall finish the shell by 12.03.2025.", "Costs: 1.234,56 EUR."]


def _docx() -> bytes:
    document = docx.Document()
    document.add_paragraph(LINES[0])
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Item", "1.234,56 EUR"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _encrypted() -> bytes:
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf([LINES])))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pdf_s_text_layer_is_read_page_by_page() -> None:
    read = extract(pdf([LINES, ["Page two."]]), "spec.pdf")
    assert read.format == "pdf" and read.pages == 2
    assert LINES[0] in read.text and "Page two." in read.text


def test_a_docx_s_paragraphs_and_tables_are_read() -> None:
    read = extract(_docx(), "spec.docx")
    assert read.format == "docx" and LINES[0] in read.text and "Item | 1.234,56 EUR" in read.text


@pytest.mark.parametrize(("name", "kind"), [("notes.txt", "txt"), ("notes.md", "md"),
                                            ("notes", "txt")])  # fmt: skip
def test_text_and_markdown_are_read_as_they_are(name: str, kind: str) -> None:
    read = extract("# Spec\n\nRoof: 120 m².".encode(), name)
    assert (read.format, read.text) == (kind, "# Spec\n\nRoof: 120 m².")


def test_the_format_is_found_from_the_bytes_without_a_name() -> None:
    assert extract(pdf([LINES])).format == "pdf" and extract(_docx()).format == "docx"


@pytest.mark.parametrize(
    ("data", "name", "says"),
    [
        pytest.param(b"%PDF-1.4\nnot really", "x.pdf", "not a readable PDF", id="corrupt-pdf"),
        pytest.param(pdf([[], []]), "scan.pdf", "no text layer", id="image-only"),
        pytest.param(_encrypted(), "locked.pdf", "encrypted", id="encrypted"),
        pytest.param(b"PK\x03\x04garbage", "x.docx", "not a readable DOCX", id="corrupt-docx"),
        pytest.param(b"\xff\xfe\x00\x00", "x.txt", "not UTF-8", id="not-utf8"),
        pytest.param(b"abc\x00def", "x.txt", "binary", id="binary"),
    ],
)
def test_what_cannot_be_read_is_a_bad_request_saying_why(data: bytes, name: str, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        extract(data, name)


def test_long_texts_are_split_at_natural_ends_within_the_limit() -> None:
    paragraphs = [f"Paragraph {i}. " + "word " * 200 for i in range(40)]
    parts = split("\n\n".join(paragraphs))
    assert all(len(p) <= PART_CHARS for p in parts) and len(parts) > 1
    assert all(p.startswith("Paragraph") for p in parts)  # never cut inside a paragraph
    assert "".join("".join(parts).split()) == "".join("".join(paragraphs).split())  # all kept


def test_a_text_without_ends_is_cut_at_the_limit() -> None:
    parts = split("x" * (PART_CHARS * 2 + 10))
    assert [len(p) for p in parts] == [PART_CHARS, PART_CHARS, 10]
