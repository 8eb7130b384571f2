#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the v4_frames fuzz target into fuzz/corpus/v4_frames/.

Each seed is a stream of protocol-4 frames (docs/protocol-v4.md, "Framing"): valid
conversations in both directions, and frames broken in one way each (direction, flags,
length, type, tag, a truncated frame, payloads that break "one encoding per message").
Run from anywhere: python3 fuzz/seeds/make_v4_seeds.py
"""
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "fuzz", "corpus", "v4_frames")


def frame(ftype, tag, payload, flags=0, length=None):
    length = len(payload) if length is None else length
    return struct.pack("<HHII", ftype, flags, tag, length) + payload


def str8(text):
    data = text.encode()
    return bytes([len(data)]) + data


def str16(text):
    data = text.encode()
    return struct.pack("<H", len(data)) + data


HELLO = frame(0x0001, 0, b"\x04\x00" + str8("securexfer 0.1.0"))


def welcome(registered=1):
    fixed = struct.pack("<BBB", 0, 0, registered) + bytes(range(16))
    fixed += struct.pack("<IHHQI", 1 << 20, 64, 64, 4 << 30, 86400)
    fixed += struct.pack("<QQQQq", 10, 2**64 - 1, 1, 2**64 - 1, 1796000000)
    return frame(0x8001, 0, fixed + str8("alice") + str8("securexfer 0.1.0"))


def error(code, kind, closes, message, tag=0):
    fixed = struct.pack("<HBBBIQQ", code, kind, closes, 0, 0, 0, 0)
    return frame(0x8002, tag, fixed + str16(message))


PUT = (
    frame(0x0201, 2, bytes(57) + str16("notes/a.txt"))
    + frame(0x0010, 2, b"hello")
    + frame(0x0202, 2, b"")
    + frame(0x0203, 2, bytes(32))
)

def entry(path, kind=1, flags=1, size=5, hash_byte=9):
    fixed = struct.pack("<BBQqqQH", kind, flags, size, 1700000000000000000, 1796000000, 7, 1)
    return fixed + bytes([hash_byte]) * 32 + str16(path)


FETCH_CLIENT = (
    HELLO
    + frame(0x0301, 1, b"\x01" + str16(""))
    + frame(0x0302, 2, struct.pack("<QQ", 0, 0) + str16("report.pdf"))
    + frame(0x0303, 3, b"\x00" + str16("old.txt"))
)

FETCH_SERVER = (
    frame(0x8301, 1, struct.pack("<H", 2) + entry("a.txt") + entry("b.txt", flags=4, hash_byte=0))
    + frame(0x8381, 1, struct.pack("<QQQQQQ", 2, 10, 10, 2**64 - 1, 2, 2**64 - 1))
    + frame(0x8302, 2, struct.pack("<QQqqB", 5, 7, 0, 1796000000, 1) + bytes([9]) * 32)
    + frame(0x8010, 2, b"hello")
    + frame(0x8382, 2, bytes([9]) * 32)
    + frame(0x8303, 3, struct.pack("<QQQ", 1, 5, 1))
)

SEEDS = {
    "fetch-client": FETCH_CLIENT,
    "fetch-server": FETCH_SERVER,
    "broken-entry-hash-without-flag": frame(0x8301, 1, struct.pack("<H", 1) + entry("a", flags=0)),
    "broken-entry-folder-size": frame(0x8301, 1, struct.pack("<H", 1) + entry("d", kind=2, flags=0, hash_byte=0)),
    "broken-list-entries-empty": frame(0x8301, 1, struct.pack("<H", 0)),
    "broken-get-resume-without-generation": HELLO + frame(0x0302, 1, struct.pack("<QQ", 5, 0) + str16("a")),
    "hello": HELLO,
    "client-conversation": HELLO + frame(0x0101, 1, str8("alice") + b"\x00") + PUT
    + frame(0x0301, 3, b"\x00") + frame(0x0204, 9, b""),
    "server-conversation": welcome() + frame(0x8101, 1, bytes(16) + str8("alice"))
    + frame(0x8201, 2, bytes(41)) + frame(0x8010, 4, b"data") + frame(0x8204, 5, b"")
    + error(7, 0, 0, "no file at notes/b.txt", tag=6),
    "error-closing": error(1, 0, 1, "frame DATA (0x0010) carries tag 4, but no put is open"),
    "error-temporary": error(21, 1, 0, "busy: try again"),
    "truncated-header": HELLO[:7],
    "truncated-payload": HELLO[:-3],
    "broken-direction": frame(0x8001, 0, b""),
    "broken-flags": frame(0x0001, 0, b"\x04\x00\x00", flags=1),
    "broken-empty-data": HELLO + frame(0x0201, 1, bytes(59)) + frame(0x0010, 1, b""),
    "broken-over-limit": frame(0x0301, 1, b"", length=65537),
    "broken-data-over-limit": frame(0x8010, 1, b"", length=(1 << 20) + 1),
    "broken-empty-type-with-payload": frame(0x0202, 1, b"x"),
    "broken-unknown-type": frame(0x0206, 1, b""),
    "broken-tag-not-increasing": HELLO + frame(0x0301, 2, b"") + frame(0x0302, 2, b""),
    "broken-hello-tag": frame(0x0001, 5, b"\x04\x00\x00"),
    "broken-data-tag": HELLO + frame(0x0201, 1, bytes(59)) + frame(0x0010, 2, b"x"),
    "broken-bool": welcome(registered=2),
    "broken-kind": error(21, 0, 0, "busy"),
    "broken-trailing": frame(0x0001, 0, b"\x04\x00\x00\x00"),
    "broken-utf8": frame(0x0001, 0, b"\x04\x00\x02\xc3\x28"),
    "broken-control": error(25, 1, 0, "internal\n"),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, "seed-" + name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
