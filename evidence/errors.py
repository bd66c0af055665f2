"""Errors of the evidence package.

::

    EvidenceError
    ├── FormatError                 bytes that are not what the format says
    │   ├── MalformedRecord         a record's JSON or one of its fields
    │   ├── MalformedBatch          batch framing, header or signature line
    │   └── MalformedMessage        an ack / reject / enrolment message
    │       └── MalformedEnrolment  an enrolment document (evidence.enrolment)
    ├── VerificationError           well-formed but not genuine
    │   ├── BadSignature            header signature does not verify with the key
    │   ├── KeyMismatch             header names another key id than the key given
    │   ├── RootMismatch            records do not hash to the header's Merkle root
    │   ├── CountMismatch           record count differs from the header's count
    │   └── InvalidProof            an inclusion proof does not lead to the root
    └── KeyFileError                reading or writing a key file
        └── InsecureKeyFile         private key readable by group or others

Every message names the thing at fault (batch gateway and sequence, record index, field,
file path) so an operator can act on it.
"""

from __future__ import annotations


class EvidenceError(Exception):
    """Base class of every error raised by :mod:`evidence`."""


class FormatError(EvidenceError):
    """Bytes that do not follow the evidence format."""


class MalformedRecord(FormatError):
    """A record is not valid canonical JSON of a known record type."""


class MalformedBatch(FormatError):
    """A batch's framing, header line or signature line is invalid."""


class MalformedMessage(FormatError):
    """An acknowledgement, rejection or enrolment message is invalid."""


class VerificationError(EvidenceError):
    """Well-formed evidence that is not genuine or not intact."""


class BadSignature(VerificationError):
    """The header signature does not verify with the given public key."""


class KeyMismatch(VerificationError):
    """The header names a different key id than the public key offered."""


class RootMismatch(VerificationError):
    """The records do not hash to the Merkle root in the header."""


class CountMismatch(VerificationError):
    """The number of records differs from the header's count."""


class InvalidProof(VerificationError):
    """An inclusion proof does not lead from the record to the signed root."""


class KeyFileError(EvidenceError):
    """A key file cannot be read, parsed or written."""


class InsecureKeyFile(KeyFileError):
    """A private key file is readable or writable by group or others."""


class MalformedEnrolment(MalformedMessage):
    """An enrolment document's framing, JSON or fields are invalid."""
