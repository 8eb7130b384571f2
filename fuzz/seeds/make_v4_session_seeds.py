#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the v4_session fuzz target into
fuzz/corpus/v4_session/.

Each seed is what a client sends after the TLS handshake (docs/protocol-v4.md, "State
machine"): whole conversations (register, put, commit, discard, upgrade), refused puts
whose body follows, and breaches of the state machine one at a time. The harness plays
the driver: a HELLO whose software text has an odd length finds the key registered.
Run from anywhere: python3 fuzz/seeds/make_v4_session_seeds.py
"""
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "fuzz", "corpus", "v4_session")


def frame(ftype, tag, payload, flags=0):
    return struct.pack("<HHII", ftype, flags, tag, len(payload)) + payload


def str8(text):
    data = text.encode()
    return bytes([len(data)]) + data


def str16(text):
    data = text.encode()
    return struct.pack("<H", len(data)) + data


def hello(software="securexfer"):  # even length: not registered
    return frame(0x0001, 0, b"\x04\x00" + str8(software))


def put(tag, path, data, size=None, no_clobber=0):
    size = len(data) if size is None else size
    head = struct.pack("<BQQ", no_clobber, size, 0) + bytes(32) + struct.pack("<q", 10**18)
    out = frame(0x0201, tag, head + str16(path))
    for i in range(0, len(data), 3):
        out += frame(0x0010, tag, data[i:i + 3])
    return out + frame(0x0202, tag, b"")


def register(tag, name, token=b""):
    return frame(0x0101, tag, str8(name) + bytes([len(token)]) + token)


def upgrade(tag, name, signature):
    return frame(0x0102, tag, bytes(16) + str8(name) + struct.pack("<H", len(signature)) + signature)


COMMIT = lambda tag: frame(0x0203, tag, bytes(32))
DISCARD = lambda tag: frame(0x0204, tag, b"")

SEEDS = {
    "register-put-commit": hello() + register(1, "alice") + put(2, "a.txt", b"hello world")
    + COMMIT(2) + put(3, "b.txt", b"x") + DISCARD(3),
    "registered-at-hello": hello("securexfer v4") + put(1, "a.txt", b"data") + COMMIT(1),
    "unknown-size": hello("securexfer v4") + put(1, "s.bin", b"stream of bytes", size=2**64 - 1)
    + COMMIT(1),
    "stranger-put-dropped": hello() + put(1, "a.txt", b"not registered") + COMMIT(1)
    + register(2, "late"),
    "refused-path-dropped": hello("securexfer v4") + put(1, "../up", b"abc") + put(2, "ok", b"d"),
    "upgrade": hello() + upgrade(1, "bob", bytes(128)) + put(2, "f", b"z") + COMMIT(2),
    "commit-unknown-tag": hello("securexfer v4") + COMMIT(7) + DISCARD(8),
    "data-past-size": hello("securexfer v4") + frame(0x0201, 1, struct.pack("<BQQ", 0, 2, 0)
    + bytes(32) + struct.pack("<q", 0) + str16("p")) + frame(0x0010, 1, b"abc"),
    "short-put-end": hello("securexfer v4") + frame(0x0201, 1, struct.pack("<BQQ", 0, 9, 0)
    + bytes(32) + struct.pack("<q", 0) + str16("p")) + frame(0x0202, 1, b""),
    "request-inside-body": hello("securexfer v4") + frame(0x0201, 1, struct.pack("<BQQ", 0, 9, 0)
    + bytes(32) + struct.pack("<q", 0) + str16("p")) + register(2, "x"),
    "before-hello": register(1, "early"),
    "second-hello": hello() + hello(),
    "wrong-major": frame(0x0001, 0, b"\x05\x00" + str8("x")),
    "resume-query-not-served": hello("securexfer v4") + frame(0x0205, 1, str16("a")),
    "list-get-rm": hello("securexfer v4") + frame(0x0301, 1, b"\x00" + str16(""))
    + frame(0x0302, 2, bytes(16) + str16("a")) + frame(0x0303, 3, b"\x00" + str16("a")),
    "register-twice": hello() + register(1, "a") + register(2, "b"),
    "slow-clock": hello() + register(200, "x") + register(250, "y") + register(255, "z"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
