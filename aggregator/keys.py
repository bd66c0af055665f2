"""The aggregator's own keys: rotation, revocation and the signed key list it publishes.

The key in ``key_file`` signs replies, statements and checkpoints. Its history lives in the
evidence store (``aggregator_keys``): the first key as it was first used, each later one
endorsed by its predecessor (:mod:`evidence.keylist`). A rotation writes the new key beside
the old as ``<key_file>.next`` (0600), records it endorsed by the old one (which retires at
that moment) and then renames it over ``key_file``; statements the old key signed stay
verifiable for its period. ``puhui aggregator keys publish`` writes the signed list of
aggregator keys and every gateway key with its revocations, for outside verifiers.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aggregator.config import load_config
from aggregator.errors import AggregatorError
from aggregator.store import open_evidence_store

if TYPE_CHECKING:
    from aggregator.store import AnyEvidenceStore
from evidence.errors import EvidenceError
from evidence.keylist import AggregatorKey, GatewayKeyEntry, KeyList, endorse, sign_keylist
from evidence.keys import GatewayKey, generate_key, load_private_key, public_key_b64, save_private_key


def register_current(store: AnyEvidenceStore, key: GatewayKey, now_ms: int) -> None:
    """Make sure the running key is in the history: the first key is added as such; a key
    that is neither known nor first is refused (rotate with ``keys rotate``, never by hand)."""
    known = store.aggregator_keys()
    if any(k.key_id == key.key_id for k in known):
        return
    if known:
        raise AggregatorError(
            f"aggregator key {key.key_id} is not in the store's key history (latest {known[-1].key_id}): "
            "a key is replaced with `puhui aggregator keys rotate`, which endorses the new one"
        )
    store.add_aggregator_key(AggregatorKey(key.key_id, public_key_b64(key.public_key), 0))


def rotate(store: AnyEvidenceStore, key_file: Path, now_ms: int) -> tuple[str, str]:
    """Endorse a new key with the current one and switch ``key_file`` to it; (old, new) ids."""
    current = load_private_key(key_file)
    register_current(store, current, now_ms)
    next_path = key_file.with_name(key_file.name + ".next")
    new = load_private_key(next_path) if next_path.exists() else _new_key(next_path)
    if not any(k.key_id == new.key_id for k in store.aggregator_keys()):
        store.add_aggregator_key(endorse(current, new.public_key, now_ms), retire=current.key_id)
    next_path.replace(key_file)
    return current.key_id, new.key_id


def _new_key(path: Path) -> GatewayKey:
    key = generate_key()
    save_private_key(key, path)
    return key


def key_list(store: AnyEvidenceStore, key: GatewayKey, now_ms: int) -> KeyList:
    """The signed list of aggregator keys and every gateway key, as the store holds them."""
    gateways = [
        GatewayKeyEntry(
            k.gateway,
            k.key_id,
            base64.b64encode(k.public_key_der).decode("ascii"),
            k.valid_from_seq,
            k.source,
            k.revoked_from_ms,
        )
        for entry in store.gateways()
        for k in entry.keys
    ]
    return sign_keylist(
        key, aggregator_keys=store.aggregator_keys(), gateway_keys=gateways, created_ms=now_ms
    )


# -- command line: puhui aggregator keys ... ---------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    p = sub.add_parser("rotate", help="endorse a new aggregator key with the current one and switch to it")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(func=_rotate)
    p = sub.add_parser("revoke", help="stop trusting what an aggregator key signed from a time on")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("key_id")
    p.add_argument("--from", dest="from_time", required=True, help="ISO 8601 with offset, or POSIX ms")
    p.set_defaults(func=_revoke)
    p = sub.add_parser("publish", help="write the signed list of aggregator and gateway keys")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_publish)


def _fail(message: str) -> int:
    print(f"puhui aggregator keys: {message}", file=sys.stderr)
    return 1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rotate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = open_evidence_store(config.store)
    try:
        old, new = rotate(store, config.key_file, _now_ms())
    except (EvidenceError, AggregatorError, OSError) as exc:
        return _fail(str(exc))
    finally:
        store.close()
    print(f"{config.key_file}: aggregator key {old} -> {new} (endorsed by {old}); restart the aggregator")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    text = args.from_time
    try:
        when = int(text) if text.isdigit() else int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError:
        return _fail(f"--from {text!r}: ISO 8601 with offset, or POSIX ms")
    store = open_evidence_store(config.store)
    try:
        if not store.revoke_aggregator_key(args.key_id, when):
            return _fail(f"no aggregator key {args.key_id} in {config.store.path}")
    finally:
        store.close()
    print(f"aggregator key {args.key_id}: revoked from {when} ms; publish a new key list")
    return 0


def _publish(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = open_evidence_store(config.store)
    try:
        key = load_private_key(config.key_file)
        register_current(store, key, _now_ms())
        document = key_list(store, key, _now_ms())
        args.out.write_bytes(document.to_bytes())
    except (EvidenceError, AggregatorError, OSError) as exc:
        return _fail(str(exc))
    finally:
        store.close()
    print(
        f"{args.out}: {len(document.aggregator_keys)} aggregator key(s), "
        f"{len(document.gateway_keys)} gateway key(s), signed by {document.issuer}"
    )
    return 0
