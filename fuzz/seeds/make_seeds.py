#!/usr/bin/env python3
"""Writes the hand-made seed inputs of both fuzz targets into fuzz/corpus/<target>/.

decode_request: every single request and response of the wire captures in
../shared/captures (or $CAPTURES), plus a few edge cases. server_session: short scripts
in the format of fuzz/harness/session.rs (one op byte, then parameters).
Run from the repository root: python3 fuzz/seeds/make_seeds.py
"""
import glob
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPTURES = os.environ.get("CAPTURES", os.path.join(ROOT, "..", "shared", "captures"))
OUT = os.path.join(ROOT, "fuzz", "corpus")


SEEN = set()


def write(target, name, data):
    if (target, data) in SEEN:
        return
    SEEN.add((target, data))
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, "seed-" + name), "wb") as f:
        f.write(data)


def split_requests(stream):
    at = 0
    while at + 23 <= len(stream):
        code, size = struct.unpack_from("<HI", stream, at + 17)
        end = at + 23 + size
        if code == 1028:
            content = struct.unpack_from("<I", stream, at + 23)[0]
            end = max(end, at + 23 + 259 + content)  # the short layout
        yield code, stream[at:end]
        at = end


def split_responses(stream):
    at = 0
    while at + 7 <= len(stream):
        code, size = struct.unpack_from("<HI", stream, at + 1)
        yield code, stream[at:at + 7 + size]
        at += 7 + size


def name(text):
    return text.encode().ljust(255, b"\0")


def request(code, payload, size=None, client=b"\0" * 16, version=3):
    size = len(payload) if size is None else size
    return client + bytes([version]) + struct.pack("<HI", code, size) + payload


def decode_seeds():
    for path in sorted(glob.glob(os.path.join(CAPTURES, "*", "*.c2s.bin"))):
        label = path.split(os.sep)[-2] + "-" + os.path.basename(path)[:-8]
        for i, (code, req) in enumerate(split_requests(open(path, "rb").read())):
            write("decode_request", f"{label}-{i}-{code}", req)
    for path in sorted(glob.glob(os.path.join(CAPTURES, "*", "*.s2c.bin"))):
        label = path.split(os.sep)[-2] + "-" + os.path.basename(path)[:-8]
        for i, (code, resp) in enumerate(split_responses(open(path, "rb").read())):
            write("decode_request", f"{label}-{i}-{code}", resp)
    file_head = lambda content, text: struct.pack("<I", content) + name(text)
    write("decode_request", "short-layout", request(1028, file_head(16, "f") + b"\x01" * 16, size=259))
    write("decode_request", "path-name", request(1031, name(r"C:\dir\..")))
    write("decode_request", "drive-name", request(1029, name("C:f.txt")))
    write("decode_request", "no-terminator", request(1025, b"a" * 255))
    write("decode_request", "huge-short-layout", request(1028, file_head(0xFFFFFFF0, "big"), size=259))
    write("decode_request", "unknown-code", request(1099, b""))


def session_seeds():
    # op bytes: 0 register, 1 public key, 2 reconnect, 3 file, 4 1029, 5 1030, 6 1031,
    # 7 raw request, 8 raw bytes, 9 use id, 10 new connection, 11 switch connection.
    hello = bytes([5]) + b"hello"
    register = bytes([0, 1, 0, 1, 0, 0])           # 1025 alice, 1026 with key 0
    send = lambda name=1, mode=0: bytes([3, name, mode]) + hello
    write("server_session", "register-send-confirm", bytes([0]) + register + send() + bytes([4, 0]))
    write("server_session", "retry-then-confirm", bytes([0]) + register + send() + bytes([5, 0]) + send() + bytes([4, 0]))
    write("server_session", "give-up", bytes([0]) + register + send() + bytes([6, 0]))
    write("server_session", "reconnect-new-connection",
          bytes([0]) + register + bytes([10, 0, 2, 0]) + send(2, 1) + bytes([4, 0]))
    write("server_session", "one-connection-per-request",
          bytes([0, 0, 1, 0, 10, 0, 1, 0, 0, 10, 0]) + send() + bytes([10, 0, 4, 0]))
    write("server_session", "stranger-address",
          bytes([0]) + register + bytes([10, 1]) + send() + bytes([4, 0]))
    write("server_session", "strict-sessions",
          bytes([1]) + register + bytes([10, 0]) + send() + bytes([4, 0]))
    write("server_session", "large-file", bytes([0]) + register + send(3, 5) + bytes([4, 0]))
    write("server_session", "garbage-content", bytes([0]) + register + bytes([3, 1, 2, 0, 2]) + b"\x11" * 32)
    write("server_session", "bad-sizes", bytes([4]) + register + bytes([3, 1, 3, 0]) + struct.pack("<II", 32, 300))
    write("server_session", "cut-content", bytes([0]) + register + send(1, 4))
    write("server_session", "dot-names", bytes([0]) + register + send(4) + send(5) + send(6) + send(7))
    write("server_session", "two-connections",
          bytes([0]) + register + send() + bytes([11]) + bytes([9, 0, 2, 0]) + send() + bytes([11, 4, 0]))
    raw = request(1025, name("carol"))
    write("server_session", "raw-request", bytes([0, 7]) + raw + bytes([7]) + request(1099, b"\0" * 4))
    write("server_session", "raw-bytes", bytes([0, 8, 30]) + raw[:30])


if __name__ == "__main__":
    if not os.path.isdir(CAPTURES):
        sys.exit(f"no captures at {CAPTURES}")
    decode_seeds()
    session_seeds()
