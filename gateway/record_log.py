"""The record log: each submit's closed interval records and builder snapshot, appended once
to a segment file and fsync'd (``state_dir/records/NNNNNNNN.log``).

A sealed batch refers to its records here (:mod:`gateway.store`), so a record is written to
disk once, compressed, instead of into a ``pending`` table, again into the batch blob and
again by every checkpoint and page rewrite (issue 22). Segment file::

    b"puhui-records/1\\n"                                   16 bytes
    frame: b"PRF1" | body length u32 | BLAKE2b-128(body)     24 bytes
           body: segment u32 | first record u64 | count u32 | added_ms i64
                 | zrecords length u32 | zsnapshot length u32 (0xFFFFFFFF: none)
                 | zrecords | zsnapshot

All integers little-endian. ``zrecords`` is zlib of the records joined by ``\\n`` (a record
is a batch line: it never holds one); ``zsnapshot`` zlib of the builder snapshot JSON as of
that submit. Records are numbered 1, 2, ... without gaps across frames and segments; the
last frame holds the builder state. A new segment starts when the next frame would take the
last one past :data:`SEGMENT_BYTES`.

**Disk writes.** An append should move no file-system metadata: on ext4 the ``fdatasync``
of a file whose size changed, or of a first write into a block allocated ahead but never
written (``fallocate``), commits the journal, which wrote ~3x the frame (measured on a
loop-mounted ext4, bench/bench_outbox.py). So a segment is written with zeros ahead of its
frames, 256 KiB at a time (in 4 KiB writes: larger ones give the page cache large folios,
which /proc/<pid>/io then counts whole for every later small write), and a spent segment
(none of its records pending or in a batch waiting for an ack; never the last) is kept as
``spare`` and renamed into the next segment instead of a new file: its blocks are written
already. Its old frames stay behind the new ones until overwritten; they name their old
segment number, which is how a scan tells them from this segment's frames.

**Crash consistency.** A frame is written with one ``pwrite`` and ``fdatasync``'d before
:meth:`RecordLog.append` returns (a new segment: the directory too). So only the last frame
of the last segment can be torn (kill -9 during the write, power loss before the sync): a
scan ends at the first bytes that are not a whole frame of that segment, and the next append
overwrites them. Its submit never returned. Damage is refused with the file and the byte: a
whole frame of the segment after bytes that are not one, a gap in the numbering, a segment
other than the last without frames. The digest covers the whole body, so a torn frame is
never taken for a whole one. The last segment is synced at open: a frame a killed process
wrote but did not sync is durable before anything (a seal) can depend on it. If a sync
fails, or a failed new segment cannot be taken away, the log takes no more writes: what
reached the disk is unknown until the next open reads it.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import EvidenceStoreError

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"puhui-records/1\n"
FRAME_MAGIC = b"PRF1"
SEGMENT_BYTES = 1 << 20  # a new segment before a frame would take the last one past this
SPARE = "spare"  # a spent segment kept for reuse
_HEAD = struct.Struct("<4sI16s")
_BODY = struct.Struct("<IQIqII")
_NO_SNAPSHOT = 0xFFFFFFFF
_MAX_BODY = 1 << 30  # a length beyond this is garbage, not a frame
_NAME = re.compile(r"^(\d{8})\.log$")
_LEVEL = 6  # zlib: a ~4 kB submit of JSON records shrinks 4-10x in ~0.1 ms
_ZERO_AHEAD = 256 * 1024
_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class _Frame:
    segment: int
    offset: int
    size: int  # head + body
    first: int
    count: int
    added_ms: int


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int  # end of its last frame
    first: int  # first record number it holds
    stop: int  # last record number + 1


@dataclass(frozen=True, slots=True)
class _Parsed:
    frame: _Frame
    zrecords: bytes
    zsnapshot: bytes | None


class RecordLog:
    """The record log of one state directory. One owner: the store holding the database lock."""

    def __init__(self, directory: Path, *, writable: bool) -> None:
        self.directory = directory
        self._writable = writable
        self._segments: list[_Segment] = []
        self._frames: list[_Frame] = []  # frames holding records, in record order
        self._firsts: list[int] = []  # their first record numbers, for bisect
        self._stop = 1  # the next record number
        self._snapshot: bytes | None = None  # zsnapshot of the last frame
        self._fds: dict[int, int] = {}
        self.broken: str | None = None  # why the log takes no more writes

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, repair: bool) -> RecordLog:
        """Read and check every segment. ``repair``: take writes, sync the last segment, and
        turn a last segment without frames (its creation was cut short) back into the spare."""
        rlog = cls(directory, writable=repair)
        try:
            rlog._load(repair)
        except BaseException:
            rlog.close()
            raise
        return rlog

    @staticmethod
    def segment_files(directory: Path) -> list[Path]:
        """The segment files in ``directory``, oldest first (none if it does not exist)."""
        if not directory.is_dir():
            return []
        named = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(named)]

    @classmethod
    def remove_all(cls, directory: Path) -> None:
        """Delete every segment and the spare (a log not yet authoritative: an interrupted migration)."""
        files = cls.segment_files(directory) + [p for p in [directory / SPARE] if p.exists()]
        for path in files:
            path.unlink()
        if files:
            _fsync_directory(directory)

    def _load(self, repair: bool) -> None:
        files = self.segment_files(self.directory)
        for i, path in enumerate(files):
            number, last = _number(path), i == len(files) - 1
            data = path.read_bytes()
            parsed, end = _scan(data, number)
            if _valid_frame_after(data, end, number) or (not parsed and not last):
                raise EvidenceStoreError(
                    f"{path}: damaged at byte {end}: "
                    + ("whole frames follow bytes that are not one" if parsed or last else "no frames")
                    + "; the record log cannot be read past it"
                )
            if not parsed:  # the last segment's creation was cut short: nothing of it was synced
                log.warning("%s: holds no frame (its creation was cut short)%s", path,
                            "; made the spare again" if repair else "")  # fmt: skip
                if repair:
                    self._retire(path)
                    _fsync_directory(self.directory)
                continue
            if data[end:].strip(b"\0") and _parse(data, end, None) is None:
                log.debug("%s: bytes from %d on are not a whole frame (a torn last write, or what is left "
                          "of a reused segment): the next append overwrites them", path, end)  # fmt: skip
            for p in parsed:
                self._add_frame(p, path)
        if repair and self._segments:
            os.fdatasync(self._fd(self._segments[-1]))
            _fsync_directory(self.directory)
        spare = self.directory / SPARE
        if repair and not self._segments and spare.exists():
            spare.unlink()  # numbering starts again at 1: its old frames could pass for new ones

    def _add_frame(self, p: _Parsed, path: Path) -> None:
        f = p.frame
        if self._segments and f.first != self._stop:
            raise EvidenceStoreError(
                f"{path}: frame at byte {f.offset} starts at record {f.first}, expected {self._stop}: "
                "records are missing from the record log"
            )
        if not self._segments or self._segments[-1].number != f.segment:
            self._segments.append(_Segment(f.segment, path, 0, f.first, f.first))
        self._segments[-1].stop = self._stop = f.first + f.count
        self._segments[-1].size = f.offset + f.size
        if f.count:
            self._frames.append(f)
            self._firsts.append(f.first)
        if p.zsnapshot is not None:
            self._snapshot = p.zsnapshot

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- what it holds -------------------------------------------------------------------------

    @property
    def stop(self) -> int:
        """The number the next record gets (1 for an empty log)."""
        return self._stop

    @property
    def start(self) -> int:
        """The first record number still held."""
        return self._segments[0].first if self._segments else self._stop

    @property
    def empty(self) -> bool:
        return not self._segments

    @property
    def tail_path(self) -> Path:
        """The last segment (for messages)."""
        return self._segments[-1].path if self._segments else self.directory

    def snapshot(self) -> bytes | None:
        """The builder snapshot JSON of the last frame that had one."""
        return None if self._snapshot is None else zlib.decompress(self._snapshot)

    def added_ms(self, record: int) -> int:
        i = bisect.bisect_right(self._firsts, record) - 1
        if i < 0 or record >= self._frames[i].first + self._frames[i].count:
            raise EvidenceStoreError(f"{self.directory}: record {record} is not in the record log")
        return self._frames[i].added_ms

    def records(self, first: int, count: int) -> list[bytes]:
        """Records ``first .. first + count - 1``, exactly as appended."""
        if count <= 0:
            return []
        if first < self.start or first + count > self._stop:
            raise EvidenceStoreError(
                f"{self.directory}: records {first}..{first + count - 1} asked for, the record log holds "
                f"{self.start}..{self._stop - 1}"
            )
        out: list[bytes] = []
        i = bisect.bisect_right(self._firsts, first) - 1
        n, stop = first, first + count
        while n < stop:
            frame = self._frames[i]
            lines = self._read(frame)
            out += lines[n - frame.first : min(frame.first + frame.count, stop) - frame.first]
            n = frame.first + frame.count
            i += 1
        return out

    def _read(self, frame: _Frame) -> list[bytes]:
        segment = next(s for s in self._segments if s.number == frame.segment)
        data = os.pread(self._fd(segment), frame.size, frame.offset)
        where = f"{segment.path}: frame at byte {frame.offset} (records {frame.first}..)"
        parsed = _parse(data, 0, frame.segment)
        if parsed is None or parsed.frame.first != frame.first or parsed.frame.count != frame.count:
            raise EvidenceStoreError(f"{where}: damaged since the log was opened")
        try:
            lines = zlib.decompress(parsed.zrecords).split(b"\n")
        except zlib.error as exc:
            raise EvidenceStoreError(f"{where}: records do not decompress: {exc}") from exc
        if len(lines) != frame.count:
            raise EvidenceStoreError(f"{where}: holds {len(lines)} records, its header says {frame.count}")
        return lines

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[bytes], snapshot: bytes | None, added_ms: int) -> None:
        """Append one frame (``snapshot`` None: keep the last one) and sync it. Raises
        OSError with nothing appended (or with :attr:`broken` set, see the module doc)."""
        if self.broken is not None:
            raise EvidenceStoreError(
                f"{self.directory}: the record log takes no more writes: {self.broken}; restart the "
                "gateway (the log is read back from the disk at start)"
            )
        zsnapshot = self._snapshot if snapshot is None else zlib.compress(snapshot, _LEVEL)
        tail = self._segments[-1] if self._segments else None
        number = tail.number if tail is not None else 0
        frame = _encode(number, self._stop, records, zsnapshot, added_ms)
        if tail is None or tail.size + len(frame) > SEGMENT_BYTES:
            number = self._next_segment()
            frame = _encode(number, self._stop, records, zsnapshot, added_ms)
            path, offset = self._start_segment(number, frame), len(SEGMENT_MAGIC)
        else:
            path, offset = tail.path, tail.size
            self._write(tail, frame)
        f = _Frame(number, offset, len(frame), self._stop, len(records), added_ms)
        self._add_frame(_Parsed(f, b"", zsnapshot), path)

    def _write(self, segment: _Segment, frame: bytes) -> None:
        """A partial write leaves no whole frame (the next append overwrites it); a failed
        sync leaves the disk unknown."""
        fd = self._fd(segment)
        _zero_ahead(fd, segment.size + len(frame))
        _pwrite_all(fd, frame, segment.size)
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self.broken = f"a sync of {segment.path} failed ({exc})"
            raise

    def _start_segment(self, number: int, frame: bytes) -> Path:
        """Segment ``number``: the spare renamed, or a new file; its header and first frame
        written and synced, and the directory."""
        path, spare = self.directory / f"{number:08d}.log", self.directory / SPARE
        if not self.directory.exists():
            self.directory.mkdir(mode=0o700)
            _fsync_directory(self.directory.parent)
        if spare.exists():
            spare.rename(path)
            # Before its old content is overwritten, no earlier name may point at this file
            # any more (the retiring rename is not synced): a power cut would leave a
            # segment holding another's frames.
            _fsync_directory(self.directory)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        step = "write"
        try:
            _zero_ahead(fd, len(SEGMENT_MAGIC) + len(frame))
            _pwrite_all(fd, SEGMENT_MAGIC + frame, 0)
            step = "sync"
            os.fdatasync(fd)
            _fsync_directory(self.directory)
        except OSError as exc:
            os.close(fd)
            try:
                self._retire(path)  # a segment without frames must not stay (it would be damage)
            except OSError as undo:
                self.broken = f"{path} could not be taken away after a failed write ({undo})"
            else:
                if step == "sync":
                    self.broken = f"a sync of {path} failed ({exc})"
            raise
        self._fds[number] = fd
        return path

    def _retire(self, path: Path) -> None:
        """``path`` becomes the spare, or goes if there is one."""
        spare = self.directory / SPARE
        if spare.exists():
            path.unlink()
        else:
            path.rename(spare)

    def _next_segment(self) -> int:
        files = self.segment_files(self.directory)
        return max([s.number for s in self._segments] + [_number(p) for p in files], default=0) + 1

    def _fd(self, segment: _Segment) -> int:
        fd = self._fds.get(segment.number)
        if fd is None:
            flags = (os.O_RDWR if self._writable else os.O_RDONLY) | os.O_CLOEXEC
            fd = self._fds[segment.number] = os.open(segment.path, flags)
        return fd

    # -- reclaiming ----------------------------------------------------------------------------

    def collect(self, keep_from: int) -> None:
        """Retire the segments whose records all lie before ``keep_from`` (never the last).
        A file that cannot be renamed or deleted is reported and tried again at the next collect."""
        while len(self._segments) > 1 and self._segments[0].stop <= keep_from:
            segment = self._segments[0]
            fd = self._fds.pop(segment.number, None)
            if fd is not None:
                os.close(fd)
            try:
                self._retire(segment.path)
            except OSError as exc:
                log.error("%s: cannot retire this spent record log segment (%s); trying again later",
                          segment.path, exc)  # fmt: skip
                return
            del self._segments[0]
            gone = bisect.bisect_left(self._firsts, segment.stop)
            del self._frames[:gone], self._firsts[:gone]


def _number(path: Path) -> int:
    match = _NAME.match(path.name)
    assert match is not None, path  # segment_files() lists only matching names
    return int(match.group(1))


def _encode(
    segment: int, first: int, records: Sequence[bytes], zsnapshot: bytes | None, added_ms: int
) -> bytes:
    zrecords = zlib.compress(b"\n".join(records), _LEVEL) if records else b""
    snap_len = _NO_SNAPSHOT if zsnapshot is None else len(zsnapshot)
    head = _BODY.pack(segment, first, len(records), added_ms, len(zrecords), snap_len)
    body = head + zrecords + (zsnapshot or b"")
    return _HEAD.pack(FRAME_MAGIC, len(body), _digest(body)) + body


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _parse(data: bytes, pos: int, segment: int | None) -> _Parsed | None:
    """The frame of ``segment`` (None: of any) at ``data[pos:]``, or None if there is no
    whole, intact one."""
    if len(data) - pos < _HEAD.size:
        return None
    magic, length, digest = _HEAD.unpack_from(data, pos)
    start = pos + _HEAD.size
    if magic != FRAME_MAGIC or not _BODY.size <= length <= min(_MAX_BODY, len(data) - start):
        return None
    body = data[start : start + length]
    if _digest(body) != digest:
        return None
    number, first, count, added_ms, zr, zs = _BODY.unpack_from(body)
    snap = 0 if zs == _NO_SNAPSHOT else zs
    if (segment is not None and number != segment) or _BODY.size + zr + snap != length:
        return None
    if (count == 0) != (zr == 0):
        return None
    zrecords = body[_BODY.size : _BODY.size + zr]
    zsnapshot = None if zs == _NO_SNAPSHOT else body[_BODY.size + zr :]
    return _Parsed(_Frame(number, pos, _HEAD.size + length, first, count, added_ms), zrecords, zsnapshot)


def _scan(data: bytes, segment: int) -> tuple[list[_Parsed], int]:
    """(the whole frames of ``segment`` from the start, where they end)."""
    if data[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
        return [], 0
    frames: list[_Parsed] = []
    pos = len(SEGMENT_MAGIC)
    while (parsed := _parse(data, pos, segment)) is not None:
        frames.append(parsed)
        pos += parsed.frame.size
    return frames, pos


def _valid_frame_after(data: bytes, end: int, segment: int) -> bool:
    """Whether a whole frame of ``segment`` starts after byte ``end`` (then the bytes at
    ``end`` are damage, not a torn last write)."""
    pos = data.find(FRAME_MAGIC, end + 1)
    while pos != -1:
        if _parse(data, pos, segment) is not None:
            return True
        pos = data.find(FRAME_MAGIC, pos + 1)
    return False


def _zero_ahead(fd: int, upto: int) -> None:
    """Make the file at least ``upto`` bytes long, writing zeros ahead (see the module doc):
    every byte below its size has been written, so appends there change no metadata."""
    size = os.fstat(fd).st_size
    if size >= upto:
        return
    end = -(-max(upto, size + _ZERO_AHEAD) // _BLOCK) * _BLOCK
    zeros = bytes(_BLOCK)
    for offset in range(size, end, _BLOCK):
        os.pwrite(fd, zeros, offset)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
