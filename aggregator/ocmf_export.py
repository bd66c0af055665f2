"""A chain session's signed meter values as OCMF, for the transparency software auditors use.

A ``session`` record (:class:`evidence.records.SessionRecord`) keeps every signed meter value
exactly as the charger carried it: an OCMF record (``OCMF|{payload}|{signature}``), its base64
or hex, or the OCPP 2.0.1 structure as JSON text. :func:`ocmf_text` unwraps one to the OCMF
record without touching its bytes (a re-serialised payload would no longer verify);
:func:`transparency_xml` writes the session's values with the meter key pinned at enrolment in
the XML form the S.A.F.E. transparency software reads (``values/value/signedData``,
``publicKey``). The meter signed these records: the export adds no signature of ours, so what
the software checks is the meter's (docs/ocpp.md, "Exporting a session").
"""

from __future__ import annotations

import base64
import binascii
import json
from xml.sax.saxutils import escape, quoteattr

from evidence.records import SessionRecord

HEADER = "OCMF|"


class ExportError(ValueError):
    """A session that cannot be exported, or a carried value that is not an OCMF record."""


def ocmf_text(carried: str) -> str:
    """The OCMF record a carried value holds: as is, from base64 or hex, or from a JSON wrapper's
    ``signedMeterData``. Raises :class:`ExportError` naming what it is not."""
    text = carried.strip()
    if text.startswith("{"):
        try:
            inner = json.loads(text)
        except (ValueError, RecursionError):
            raise ExportError("a carried value starts with '{' but is not JSON") from None
        data = inner.get("signedMeterData") if isinstance(inner, dict) else None
        if not isinstance(data, str):
            raise ExportError("a carried JSON value has no signedMeterData string")
        return ocmf_text(data)
    if text.startswith(HEADER):
        return text
    for decode in (_hex, _b64):
        raw = decode(text)
        if raw is not None and raw.startswith(HEADER.encode()):
            return raw.decode("utf-8")
    raise ExportError(f"a carried value is not an OCMF record (starts {text[:12]!r})")


def _hex(text: str) -> bytes | None:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def transparency_xml(record: SessionRecord, *, verified_only: bool = True) -> str:
    """A meter-signed session's signed values (those the gateway verified, unless
    ``verified_only`` is False) and the pinned meter key, as transparency software input. A
    gateway-signed session is refused: its energy does not rest on the meter's signatures."""
    if record.meter_key is None:
        raise ExportError(f"session {record.charger}/{record.transaction_id}: no meter key was pinned for "
                          "this charger: nothing a transparency software could check it with")  # fmt: skip
    if record.assurance != "meter_signed":
        statuses = sorted({v.status for v in record.signed_values}) or "none signed"
        raise ExportError(f"session {record.charger}/{record.transaction_id} is {record.assurance}: its "
                          "Begin and End readings are not both meter-signed (signed values: "
                          f"{statuses})")  # fmt: skip
    values = [v for v in record.signed_values if v.status == "verified" or not verified_only]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<values>"]
    for v in values:
        context = f" context={quoteattr(v.context)}" if v.context else ""
        lines.append(f"  <value transactionId={quoteattr(record.transaction_id)}{context}>")
        lines.append(
            f'    <signedData format="OCMF" encoding="plain">{escape(ocmf_text(v.carried))}</signedData>'
        )
        lines.append(f'    <publicKey encoding="base16">{record.meter_key}</publicKey>')
        lines.append("  </value>")
    lines.append("</values>")
    return "\n".join(lines) + "\n"
