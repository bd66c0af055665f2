"""Hash-chain checks across a gateway's batches.

Each header carries ``seq`` (1, 2, 3, ...) and ``prev`` (SHA-256 of the previous header's
bytes). A :class:`ChainTracker` takes headers in arrival order and says, for each, one of:

- ``append``: the next batch, linked to the last one;
- ``gap``: accepted, but sequence numbers before it are missing (listed);
- ``reorder``: a late batch filling an earlier gap, linked on both sides where known;
- ``duplicate``: the same header again (same sequence number, same bytes): nothing new;
- ``fork``: a different header for a sequence number already seen, or a ``prev`` that does
  not match its neighbour: two histories; rejected.

:func:`verify_chain` runs a tracker over a whole list and reports each kind separately.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from evidence.batch import GENESIS_PREV, BatchHeader


class ChainVerdict(enum.Enum):
    APPEND = "append"
    GAP = "gap"
    REORDER = "reorder"
    DUPLICATE = "duplicate"
    FORK = "fork"

    @property
    def accepted(self) -> bool:
        """Whether the batch is new, genuine chain content to store."""
        return self in (ChainVerdict.APPEND, ChainVerdict.GAP, ChainVerdict.REORDER)


@dataclass(frozen=True, slots=True)
class ChainStep:
    verdict: ChainVerdict
    seq: int
    missing: tuple[int, ...] = ()  # for GAP: sequence numbers skipped
    reason: str = ""  # for FORK: what conflicts


class ChainTracker:
    """Chain state of one gateway: which sequence numbers are known, with which hashes."""

    def __init__(self) -> None:
        self._hash: dict[int, str] = {}
        self._prev: dict[int, str] = {}
        self.highest = 0

    def known(self, seq: int) -> str | None:
        return self._hash.get(seq)

    def missing(self) -> list[int]:
        """Sequence numbers below the highest one seen that have not arrived."""
        return [s for s in range(1, self.highest) if s not in self._hash]

    def check(self, header: BatchHeader, header_sha256: str) -> ChainStep:
        """Classify a header without changing the state."""
        seq = header.seq
        seen = self._hash.get(seq)
        if seen is not None:
            if seen == header_sha256:
                return ChainStep(ChainVerdict.DUPLICATE, seq)
            return ChainStep(ChainVerdict.FORK, seq, reason=f"seq {seq} already has header {seen[:16]}…")
        reason = self._link_conflict(header, header_sha256)
        if reason:
            return ChainStep(ChainVerdict.FORK, seq, reason=reason)
        if seq == self.highest + 1:
            return ChainStep(ChainVerdict.APPEND, seq)
        if seq > self.highest:
            skipped = tuple(s for s in range(self.highest + 1, seq) if s not in self._hash)
            return ChainStep(ChainVerdict.GAP, seq, missing=skipped)
        return ChainStep(ChainVerdict.REORDER, seq)

    def _link_conflict(self, header: BatchHeader, header_sha256: str) -> str:
        seq = header.seq
        if seq == 1 and header.prev != GENESIS_PREV:
            return "seq 1 must have prev = 64 zeros"
        before = self._hash.get(seq - 1)
        if before is not None and header.prev != before:
            return f"prev {header.prev[:16]}… does not match seq {seq - 1} ({before[:16]}…)"
        after_prev = self._prev.get(seq + 1)
        if after_prev is not None and after_prev != header_sha256:
            return f"seq {seq + 1} names a different predecessor ({after_prev[:16]}…)"
        return ""

    def observe(self, header: BatchHeader, header_sha256: str) -> ChainStep:
        """Classify a header and, if accepted, add it to the chain."""
        step = self.check(header, header_sha256)
        if step.verdict.accepted:
            self._hash[header.seq] = header_sha256
            self._prev[header.seq] = header.prev
            self.highest = max(self.highest, header.seq)
        return step


@dataclass
class ChainReport:
    """What a pass over a list of headers found, by kind."""

    duplicates: list[int] = field(default_factory=list)
    forks: list[tuple[int, str]] = field(default_factory=list)
    reorders: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A complete, linear chain: nothing missing, duplicated, forked or reordered."""
        return not (self.duplicates or self.forks or self.reorders or self.missing)


def verify_chain(headers: Iterable[tuple[BatchHeader, str]]) -> ChainReport:
    """Check (header, header_sha256) pairs in the order given."""
    tracker = ChainTracker()
    report = ChainReport()
    for header, digest in headers:
        step = tracker.observe(header, digest)
        if step.verdict is ChainVerdict.DUPLICATE:
            report.duplicates.append(step.seq)
        elif step.verdict is ChainVerdict.FORK:
            report.forks.append((step.seq, step.reason))
        elif step.verdict is ChainVerdict.REORDER:
            report.reorders.append(step.seq)
    report.missing = tracker.missing()
    return report
