"""What both SQL backends of the evidence store read the same way: a batch's exact bytes
from its stored form, and the chain-session lookup (its query and the cut of its rows)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

from aggregator.errors import StoreError
from aggregator.view import BatchRef


def batch_data(blob: bytes, codec: str | None) -> bytes:
    """A batch's exact signed bytes from its stored form."""
    if codec is None:
        return bytes(blob)
    if codec == "zlib":
        return zlib.decompress(blob)
    raise StoreError(f"stored batch data has an unknown codec {codec!r} (written by a newer puhui?)")


def chain_sessions_query(
    mark: str,
    *,
    gateway: str | None,
    charger: str | None,
    transaction_id: str | None,
    start_ms: int | None,
    end_ms: int | None,
) -> tuple[str, list[object]]:
    """The SQL (with ``mark``, the driver's placeholder) and parameters selecting the matching
    OCPP chain sessions with their batches, in arrival order; rows as
    :func:`chain_session_leaves` takes them."""
    where: list[str] = []
    params: list[object] = []
    for column, value in (("gateway", gateway), ("charger", charger), ("transaction_id", transaction_id)):
        if value is not None:
            where.append(f"s.{column} = {mark}")
            params.append(value)
    if start_ms is not None:
        where.append(f"s.stop_time_ms > {mark}")
        params.append(start_ms)
    if end_ms is not None:
        where.append(f"coalesce(s.start_time_ms, s.stop_time_ms) < {mark}")
        params.append(end_ms)
    sql = (
        "SELECT s.idx, b.gateway, b.seq, b.header_sha256, b.root, b.key_id, b.data, b.data_codec"
        " FROM ocpp_chain_sessions s JOIN batches b ON b.id = s.batch_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY s.batch_id, s.idx"
    )
    return sql, params


def chain_session_leaves(rows: Iterable[tuple[Any, ...]]) -> list[tuple[BatchRef, int, bytes]]:
    """``(batch, leaf index, the record's exact bytes)`` from :func:`chain_sessions_query`'s rows."""
    out: list[tuple[BatchRef, int, bytes]] = []
    split: dict[tuple[str, int], list[bytes]] = {}  # rows come batch by batch: decode each once
    for idx, gw, seq, digest, root, kid, data, codec in rows:
        ref = BatchRef(str(gw), int(seq), str(digest), str(root), str(kid))
        if (ref.gateway, ref.seq) not in split:
            split = {(ref.gateway, ref.seq): batch_data(data, codec).split(b"\n")[2:-1]}
        out.append((ref, int(idx), split[(ref.gateway, ref.seq)][int(idx)]))
    return out
