"""Figures and dates in a model's answer, read in English and German forms.

Quantities are numbers with a unit (a bare number says too little to be a figure: it may
be a phone number, a version, a paragraph), normalised to a value and a unit name:
"1,234.56 EUR" and "1.234,56 €" are both 1234.56 EUR, "2,5 Mio. €" is 2,500,000 EUR.
A number with one separator followed by exactly three digits ("1,234", "1.234") is read
as thousands, as construction figures mostly are. Dates become ISO dates; a calendar week
("KW 12/2025") becomes its Monday.
"""

from __future__ import annotations

import datetime as dt
import re

from schemas.construction import DateFound, Quantity

__all__ = ["dates", "quantities"]

# A number as written in either language: grouped by , or . (or a thin space), with
# decimals after the other one, or plain.
_NUMBER = (
    r"\d{1,3}(?:,\d{3})+(?:\.\d+)?"  # 1,234,567.89
    r"|\d{1,3}(?:\.\d{3})+(?:,\d+)?"  # 1.234.567,89
    r"|\d{1,3}(?:[\u202f\u00a0 ]\d{3})+(?:[.,]\d+)?"  # 1 234 567,89
    r"|\d+(?:[.,]\d+)?"  # 1234.5, 2,5
)
_SCALES = {
    "mio": 1e6, "mio.": 1e6, "million": 1e6, "millionen": 1e6, "mrd": 1e9, "mrd.": 1e9,
    "milliarden": 1e9, "billion": 1e9, "tsd": 1e3, "tsd.": 1e3, "k": 1e3,
}  # fmt: skip
_UNITS = {
    "eur": "EUR", "€": "EUR", "euro": "EUR",
    "m²": "m2", "m2": "m2", "qm": "m2", "sqm": "m2",
    "m³": "m3", "m3": "m3", "cbm": "m3",
    "t": "t", "tonnes": "t", "tons": "t", "tonnen": "t", "kg": "kg",
    "km": "km", "m": "m", "cm": "cm", "mm": "mm",
    "%": "%", "prozent": "%", "percent": "%",
    "wochen": "weeks", "woche": "weeks", "weeks": "weeks", "week": "weeks",
    "tage": "days", "tagen": "days", "tag": "days", "days": "days", "day": "days",
    "monate": "months", "monaten": "months", "monat": "months", "months": "months",
    "month": "months", "stunden": "hours", "stunde": "hours", "hours": "hours", "h": "hours",
}  # fmt: skip


def _alternatives(words: dict[str, object]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SCALE = _alternatives(_SCALES)
_UNIT = _alternatives(_UNITS)
# Not inside a longer token: no letter, digit, §, or separator just before, none after.
_QUANTITY = re.compile(
    rf"(?<![\w§.,/+-])(?P<cur>€|EUR)?\s?(?P<num>{_NUMBER})(?![\d])"
    rf"(?:\s?(?P<scale>{_SCALE}))?(?:\s?(?P<unit>{_UNIT}))?(?![\w²³])",
    re.IGNORECASE,
)


def _value(text: str) -> float:
    """A number as either language writes it."""
    text = re.sub(r"[\u202f\u00a0 ]", "", text)
    if "," in text and "." in text:  # the last one is the decimal mark
        decimal = "," if text.rfind(",") > text.rfind(".") else "."
        group = "." if decimal == "," else ","
        return float(text.replace(group, "").replace(decimal, "."))
    for mark in ",.":
        if text.count(mark) > 1 or (text.count(mark) == 1 and len(text.split(mark)[1]) == 3):
            return float(text.replace(mark, ""))  # grouped thousands
    return float(text.replace(",", "."))


def quantities(text: str) -> list[Quantity]:
    """Every number with a unit (or a currency before it) in `text`, in order."""
    found: list[Quantity] = []
    for m in _QUANTITY.finditer(text):
        unit = m["unit"] or m["cur"]
        if unit is None:
            continue
        value = _value(m["num"]) * _SCALES.get((m["scale"] or "").casefold(), 1)
        found.append(
            Quantity(text=m[0].strip(), value=round(value, 6), unit=_UNITS[unit.casefold()])
        )
    return found


_MONTHS = {
    "januar": 1, "jan": 1, "january": 1, "februar": 2, "feb": 2, "february": 2,
    "märz": 3, "maerz": 3, "mär": 3, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "mai": 5, "may": 5, "juni": 6, "june": 6, "jun": 6, "juli": 7, "july": 7, "jul": 7,
    "august": 8, "aug": 8, "september": 9, "sept": 9, "sep": 9, "oktober": 10,
    "october": 10, "okt": 10, "oct": 10, "november": 11, "nov": 11, "dezember": 12,
    "december": 12, "dez": 12, "dec": 12,
}  # fmt: skip
_MONTH = _alternatives(_MONTHS)
_EDGE_BEFORE, _EDGE_AFTER = r"(?<![\w.,/§-])", r"(?![\w/-]|[.,]\d)"
_DATES = [
    ("dmy", re.compile(rf"{_EDGE_BEFORE}(\d{{1,2}})\.(\d{{1,2}})\.(\d{{4}}){_EDGE_AFTER}")),
    ("iso", re.compile(rf"{_EDGE_BEFORE}(\d{{4}})-(\d{{2}})-(\d{{2}}){_EDGE_AFTER}")),
    (
        "d_month_y",
        re.compile(rf"{_EDGE_BEFORE}(\d{{1,2}})\.?\s+({_MONTH})\.?\s+(\d{{4}})\b", re.IGNORECASE),
    ),
    ("month_d_y", re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}}),?\s+(\d{{4}})\b", re.IGNORECASE)),
    ("week", re.compile(r"\b(?:KW|CW|week)\s?(\d{1,2})\s?/\s?(\d{4})\b", re.IGNORECASE)),
]


def _date(kind: str, groups: tuple[str, ...]) -> dt.date:
    if kind == "dmy":
        return dt.date(int(groups[2]), int(groups[1]), int(groups[0]))
    if kind == "iso":
        return dt.date(int(groups[0]), int(groups[1]), int(groups[2]))
    if kind == "d_month_y":
        return dt.date(int(groups[2]), _MONTHS[groups[1].casefold()], int(groups[0]))
    if kind == "month_d_y":
        return dt.date(int(groups[2]), _MONTHS[groups[0].casefold()], int(groups[1]))
    return dt.date.fromisocalendar(int(groups[1]), int(groups[0]), 1)


def dates(text: str) -> list[DateFound]:
    """Every date in `text` as an ISO date, in order; impossible dates are not dates."""
    found: list[tuple[int, DateFound]] = []
    for kind, pattern in _DATES:
        for m in pattern.finditer(text):
            try:
                day = _date(kind, m.groups())
            except ValueError:  # 31.02.2025, week 54
                continue
            found.append((m.start(), DateFound(text=m[0], date=day.isoformat())))
    return [d for _, d in sorted(found, key=lambda pair: pair[0])]
