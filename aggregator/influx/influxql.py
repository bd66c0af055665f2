"""Quoting for InfluxQL (InfluxDB 1.x query language).

The InfluxQL scanner reads a quoted identifier or string literal up to the closing quote,
rejects a raw newline, and knows exactly four escapes: ``\\\\``, ``\\"``, ``\\'`` and
``\\n``. Any other backslash sequence is a parse error, so quoting escapes precisely the
backslash, the quote character and the newline.
"""

from __future__ import annotations

_IDENT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_LITERAL_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n"})


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted InfluxQL identifier (measurement, tag, field, database)."""
    return '"' + name.translate(_IDENT_ESCAPES) + '"'


def quote_literal(value: str) -> str:
    """``value`` as a single-quoted InfluxQL string literal (e.g. a tag value in WHERE)."""
    return "'" + value.translate(_LITERAL_ESCAPES) + "'"
