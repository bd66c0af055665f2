"""The record log on its own: numbering across segments, torn last writes, damage, reuse."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import record_log
from gateway.errors import EvidenceStoreError
from gateway.record_log import SEGMENT_MAGIC, SPARE, RecordLog


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Segments of 1 KiB: a few frames each, so tests cross segments."""
    monkeypatch.setattr(record_log, "SEGMENT_BYTES", 1024)
    yield 1024


def rec(n: int) -> bytes:
    return json.dumps({"n": n, "pad": "x" * (n % 37)}, separators=(",", ":")).encode()


def snap(n: int) -> bytes:
    return json.dumps({"next": n}).encode()


def fill(rlog: RecordLog, start: int, submits: int, rng: random.Random) -> int:
    """Append ``submits`` frames of 0-9 records numbered from ``start``; returns the next number."""
    n = start
    for _ in range(submits):
        k = rng.randint(0, 9)
        rlog.append([rec(i) for i in range(n, n + k)], snap(n + k), 1000 + n)
        n += k
    return n


def reopen(path: Path, *, repair: bool = True) -> RecordLog:
    return RecordLog.open(path, repair=repair)


def test_records_come_back_exactly_across_segments_and_reopen(tmp_path: Path, small_segments: int) -> None:
    rng = random.Random(1)
    rlog = reopen(tmp_path / "records")
    n = fill(rlog, 1, 60, rng)
    assert len(RecordLog.segment_files(tmp_path / "records")) > 3
    for log_ in (rlog, reopen(tmp_path / "records", repair=False)):
        assert log_.stop == n and log_.start == 1
        assert log_.records(1, n - 1) == [rec(i) for i in range(1, n)]
        a, b = sorted(rng.sample(range(1, n), 2))
        assert log_.records(a, b - a) == [rec(i) for i in range(a, b)]
        assert log_.snapshot() == snap(n)
        log_.close()


def test_a_frame_without_snapshot_keeps_the_last_one_and_none_is_none(tmp_path: Path) -> None:
    rlog = reopen(tmp_path)
    rlog.append([rec(1)], None, 1)
    assert rlog.snapshot() is None
    rlog.append([rec(2)], snap(3), 2)
    rlog.append([rec(3)], None, 3)
    rlog.close()
    rlog = reopen(tmp_path)
    assert rlog.snapshot() == snap(3) and rlog.added_ms(3) == 3 and rlog.added_ms(1) == 1
    rlog.close()


def frame_bounds(path: Path) -> list[tuple[int, int]]:
    """(start, end) of each whole frame of a segment file."""
    data = path.read_bytes()
    frames, _ = record_log._scan(data, record_log._number(path))
    return [(p.frame.offset, p.frame.offset + p.frame.size) for p in frames]


@pytest.mark.parametrize("tear", ["zeros", "garbage", "truncate"])
def test_a_torn_last_frame_is_dropped_at_every_cut_and_the_log_goes_on(tmp_path: Path, tear: str) -> None:
    rlog = reopen(tmp_path)
    for i in range(1, 4):
        rlog.append([rec(i), rec(i + 100)], snap(i), i)  # records 1..6, two per frame
    rlog.close()
    [path] = RecordLog.segment_files(tmp_path)
    start, end = frame_bounds(path)[-1]
    whole = path.read_bytes()
    rng = random.Random(2)
    for cut in range(start, end):  # the last frame reached the disk up to ``cut``
        data = bytearray(whole)
        if tear == "truncate":
            del data[cut:]
        else:
            fill_bytes = bytes(end - cut) if tear == "zeros" else rng.randbytes(end - cut)
            data[cut:end] = fill_bytes
        path.write_bytes(bytes(data))
        rlog = reopen(tmp_path)
        assert (rlog.stop, rlog.snapshot()) == (5, snap(2)), cut  # frames 1 and 2 stand
        assert rlog.records(1, 4) == [rec(1), rec(101), rec(2), rec(102)]
        rlog.append([rec(7)], snap(7), 7)  # overwrites the torn bytes
        rlog.close()
        rlog = reopen(tmp_path)
        assert rlog.records(1, 5) == [rec(1), rec(101), rec(2), rec(102), rec(7)], cut
        assert rlog.snapshot() == snap(7)
        rlog.close()


def test_a_damaged_frame_with_whole_frames_after_it_refuses_to_open(tmp_path: Path) -> None:
    rlog = reopen(tmp_path)
    for i in range(1, 4):
        rlog.append([rec(i)], snap(i), i)
    rlog.close()
    [path] = RecordLog.segment_files(tmp_path)
    middle = frame_bounds(path)[1][0]
    data = bytearray(path.read_bytes())
    data[middle + 40] ^= 0x01
    path.write_bytes(bytes(data))
    for repair in (True, False):
        with pytest.raises(
            EvidenceStoreError, match=f"{path}: damaged at byte {middle}: whole frames follow"
        ):
            reopen(tmp_path, repair=repair)


@pytest.mark.parametrize("which", ["middle", "last"])
def test_damage_in_an_earlier_segment_refuses_to_open(
    tmp_path: Path, small_segments: int, which: str
) -> None:
    rlog = reopen(tmp_path)
    fill(rlog, 1, 40, random.Random(3))
    rlog.close()
    first, second = RecordLog.segment_files(tmp_path)[:2]
    bounds = [b for b in frame_bounds(first)]
    start, end = bounds[1] if which == "middle" else bounds[-1]
    data = bytearray(first.read_bytes())
    data[end - 1] ^= 0xFF
    first.write_bytes(bytes(data))
    # Whole frames after it: damage. Its last frame: the next segment's numbering does not follow.
    expected = (
        f"{first}: damaged at byte {start}" if which == "middle" else f"{second}: frame at byte 16 starts"
    )
    with pytest.raises(EvidenceStoreError, match=expected):
        reopen(tmp_path)


def test_a_damaged_frame_read_later_is_named(tmp_path: Path) -> None:
    rlog = reopen(tmp_path)
    rlog.append([rec(1), rec(2)], snap(3), 1)
    [path] = RecordLog.segment_files(tmp_path)
    (start, end) = frame_bounds(path)[0]
    with path.open("r+b") as f:
        f.seek(end - 3)
        f.write(b"\xff")
    with pytest.raises(
        EvidenceStoreError, match=f"{path}: frame at byte {start} .*damaged since the log was opened"
    ):
        rlog.records(1, 2)
    rlog.close()


def test_a_gap_in_the_numbering_refuses_to_open(tmp_path: Path, small_segments: int) -> None:
    rlog = reopen(tmp_path)
    fill(rlog, 1, 40, random.Random(4))
    rlog.close()
    files = RecordLog.segment_files(tmp_path)
    files[1].unlink()  # records in the middle gone
    with pytest.raises(EvidenceStoreError, match=f"{files[2]}: frame at byte 16 starts at record"):
        reopen(tmp_path)


def test_spent_segments_become_the_spare_and_are_reused_with_their_old_frames_ignored(
    tmp_path: Path, small_segments: int
) -> None:
    rng = random.Random(5)
    rlog = reopen(tmp_path)
    n = fill(rlog, 1, 30, rng)
    files = RecordLog.segment_files(tmp_path)
    first_inode = files[0].stat().st_ino
    rlog.collect(n)  # every record spent: all segments but the last go
    assert RecordLog.segment_files(tmp_path) == files[-1:]
    spare = tmp_path / SPARE
    assert spare.stat().st_ino == first_inode  # kept for reuse (the others deleted)
    while spare.exists():  # until the next segment is the spare renamed
        rlog.append([rec(n)], snap(n + 1), n)
        n += 1
    rlog.append([rec(n)], snap(n + 1), n)
    n += 1
    rlog.close()
    reused = RecordLog.segment_files(tmp_path)[-1]
    assert reused.stat().st_ino == first_inode
    data = reused.read_bytes()
    _, end = record_log._scan(data, record_log._number(reused))
    stale = record_log._parse(data, data.find(record_log.FRAME_MAGIC, end), None)
    assert stale is not None and stale.frame.segment == 1  # a whole old frame after the new ones
    for repair in (True, False):
        again = reopen(tmp_path, repair=repair)
        assert again.stop == n and again.snapshot() == snap(n)
        assert again.records(again.start, n - again.start) == [rec(i) for i in range(again.start, n)]
        again.close()


def test_a_segment_whose_creation_was_cut_short_becomes_the_spare(
    tmp_path: Path, small_segments: int
) -> None:
    rlog = reopen(tmp_path)
    n = fill(rlog, 1, 12, random.Random(6))
    rlog.close()
    last = RecordLog.segment_files(tmp_path)[-1]
    following = last.with_name(f"{record_log._number(last) + 1:08d}.log")
    following.write_bytes(SEGMENT_MAGIC[:9])  # torn: header and first frame are one write
    after = following.with_name(f"{record_log._number(following) + 1:08d}.log")
    after.write_bytes(SEGMENT_MAGIC)
    with pytest.raises(EvidenceStoreError, match=f"{following}: damaged at byte 0: no frames"):
        reopen(tmp_path)  # only the last segment can be a cut-short creation
    after.unlink()
    rlog = reopen(tmp_path)
    assert (tmp_path / SPARE).exists() and not following.exists()
    assert rlog.stop == n
    rlog.append([rec(n)], snap(n + 1), 9)
    rlog.close()
    rlog = reopen(tmp_path)
    assert rlog.stop == n + 1 and rlog.records(n, 1) == [rec(n)]
    rlog.close()


def test_a_failed_sync_stops_all_writes_and_a_partial_write_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rlog = reopen(tmp_path)
    rlog.append([rec(1)], snap(2), 1)
    real_pwrite = os.pwrite

    def half_then_full_disk(fd: int, data: bytes | memoryview, offset: int) -> int:
        real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record_log.os, "pwrite", half_then_full_disk)
    with pytest.raises(OSError):
        rlog.append([rec(2)], snap(3), 2)
    monkeypatch.setattr(record_log.os, "pwrite", real_pwrite)
    assert rlog.broken is None and rlog.stop == 2
    rlog.append([rec(2)], snap(3), 2)  # over the half frame

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(record_log.os, "fdatasync", failing_sync)
    with pytest.raises(OSError):
        rlog.append([rec(3)], snap(4), 3)
    monkeypatch.undo()
    assert rlog.broken is not None and "Input/output error" in rlog.broken
    with pytest.raises(EvidenceStoreError, match="takes no more writes"):
        rlog.append([rec(3)], snap(4), 3)
    rlog.close()
    rlog = reopen(tmp_path)  # what reached the disk decides: here the unsynced frame did
    assert rlog.records(1, 3) == [rec(1), rec(2), rec(3)] and rlog.snapshot() == snap(4)
    rlog.close()


def test_segments_are_written_ahead_with_zeros(tmp_path: Path) -> None:
    rlog = reopen(tmp_path)
    rlog.append([rec(1)], snap(2), 1)
    [path] = RecordLog.segment_files(tmp_path)
    ahead = path.stat().st_size
    assert ahead == record_log._ZERO_AHEAD and path.stat().st_blocks * 512 >= ahead
    assert path.read_bytes()[frame_bounds(path)[-1][1] :] == bytes(ahead - frame_bounds(path)[-1][1])
    big = [rec(i) + os.urandom(3000).hex().encode() for i in range(2, 100)]  # past the zeros
    rlog.append(big, snap(100), 2)
    rlog.close()
    assert path.stat().st_size == 2 * record_log._ZERO_AHEAD
    rlog = reopen(tmp_path)
    assert rlog.records(2, 98) == big
    rlog.close()


def test_a_spare_left_without_segments_is_not_reused(tmp_path: Path, small_segments: int) -> None:
    rlog = reopen(tmp_path)
    n = fill(rlog, 1, 30, random.Random(8))
    rlog.collect(n)
    rlog.close()
    for path in RecordLog.segment_files(tmp_path):
        path.unlink()  # only the spare is left, its frames numbered from 1 as a new log's would be
    rlog = reopen(tmp_path)
    assert not (tmp_path / SPARE).exists() and rlog.stop == 1
    rlog.append([rec(1)], snap(2), 1)
    rlog.close()
    rlog = reopen(tmp_path, repair=False)
    assert rlog.records(1, 1) == [rec(1)]
    rlog.close()
