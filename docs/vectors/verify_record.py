#!/usr/bin/env python3
"""Verify one puhui record on its own: python3 verify_record.py record-proof.json GATEWAY.pub.pem (PEM)

Needs only the standard library and `cryptography`. The gateway's public key comes from a file
you trust (enrolment, the aggregator's key list), never from the proof document. Checks that
this key signed the batch header, then walks the RFC 6962 inclusion proof from the record's
exact bytes to the Merkle root in that header (RFC 9162, section 2.1.3.2). Exit 0 = verified.
"""
import base64, hashlib, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

def H(b): return hashlib.sha256(b).digest()

def need(ok, why):  # not `assert`: python -O would skip it
    if not ok: raise ValueError(why)

def root_from_path(leaf, index, size, path):
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0: return None
        if fn & 1 or fn == sn:
            r = H(b"\x01" + p + r)
            while not fn & 1 and fn != 0: fn, sn = fn >> 1, sn >> 1
        else:
            r = H(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None

def main(path, key_path):
    doc, key = json.load(open(path)), serialization.load_pem_public_key(open(key_path, "rb").read())
    need(isinstance(getattr(key, "curve", None), ec.SECP256R1), "key is not P-256")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid, header = hashlib.sha256(der).hexdigest()[:32], doc["header"].encode()
    head, proof = json.loads(header), doc["proof"]
    need(head["key_id"] == kid, f"header names key {head['key_id']}, the trusted key is {kid}")
    key.verify(base64.b64decode(doc["signature"]), header, ec.ECDSA(hashes.SHA256()))
    need(proof["size"] == head["count"] and 0 <= proof["index"] < proof["size"],
         f"leaf {proof['index']} of {proof['size']} does not fit the header's {head['count']} records")
    leaf, path = H(b"\x00" + doc["record"].encode()), [bytes.fromhex(h) for h in proof["path"]]
    root = root_from_path(leaf, proof["index"], proof["size"], path)
    need(root is not None and root.hex() == head["root"], "record is not under the signed root")
    print(f"OK: record {proof['index']} of batch {head['gateway']}#{head['seq']}, key {kid}: {doc['record']}")

if __name__ == "__main__":
    try:
        main(*sys.argv[1:3]) if len(sys.argv) == 3 else sys.exit(__doc__.splitlines()[0])
    except Exception as exc:  # any failure means: not verified
        print(f"NOT VERIFIED: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
