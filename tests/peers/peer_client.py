#!/usr/bin/env python3
"""Independent reference client for the securexfer wire protocol (version 3).

Written from /work/shared/PROTOCOL.md only, without looking at the Rust code, so that
the Rust server can be tested against a second implementation.

Usage:
    python3 peer_client.py HOST PORT NAME FILE [--workdir DIR] [--remote-name NAME]
                           [--corrupt-sends N]

The client runs two sessions against the server:

1. register (1025 -> 2100), send its public key (1026 -> 2102), send FILE (1028 -> 2103),
   confirm the checksum (1029 -> 2104);
2. on a new TCP connection: reconnect (1027 -> 2105) and send FILE again the same way.

It prints one line per step on stdout and exits 0 only if both sends were verified.
On any failure it prints a message on stderr and exits 1.

Only the standard library and the `cryptography` package are used.
"""

import argparse
import base64
import os
import socket
import struct
import sys

from cryptography.hazmat.primitives import hashes, padding as sym_padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# --- protocol constants -------------------------------------------------------------

CLIENT_VERSION = 3

REQ_REGISTER = 1025
REQ_PUBLIC_KEY = 1026
REQ_RECONNECT = 1027
REQ_SEND_FILE = 1028
REQ_CRC_OK = 1029
REQ_CRC_WRONG_RESEND = 1030
REQ_CRC_WRONG_GIVE_UP = 1031

RESP_REGISTERED = 2100
RESP_REGISTRATION_FAILED = 2101
RESP_AES_KEY = 2102
RESP_FILE_RECEIVED = 2103
RESP_ACK = 2104
RESP_RECONNECT_OK = 2105
RESP_RECONNECT_DENIED = 2106
RESP_GENERAL_ERROR = 2107

REQUEST_HEADER = struct.Struct("<16sBHI")   # client id, version, code, payload size
RESPONSE_HEADER = struct.Struct("<BHI")     # version, code, payload size
FILE_RECEIVED = struct.Struct("<16sI255sI")  # client id, content size, file name, cksum

CLIENT_ID_SIZE = 16
NAME_SIZE = 255
PUBLIC_KEY_SIZE = 160
AES_KEY_SIZE = 16
RSA_BITS = 1024
# python `cryptography` cannot generate e = 17 (the peer default); e = 3 also yields a
# 160-byte SubjectPublicKeyInfo, while 65537 would yield 162 bytes (too long).
RSA_PUBLIC_EXPONENT = 3

MAX_SENDS = 4              # one send plus up to three resends
MAX_STEP_ATTEMPTS = 4      # one try plus up to three retries after 2107 / no answer
SOCKET_TIMEOUT = 30.0
MAX_RESPONSE_PAYLOAD = 1 << 20

ZERO_ID = bytes(CLIENT_ID_SIZE)


class ClientFailure(Exception):
    """A fatal failure of the transfer; the message is reported on stderr."""


class NoAnswer(Exception):
    """The server closed the connection or did not answer in time."""


# --- checksum -----------------------------------------------------------------------

def _make_cksum_table():
    """Return the 256-entry table for the non-reflected CRC-32, polynomial 0x04C11DB7."""
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            if crc & 0x80000000:
                crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF
            else:
                crc = (crc << 1) & 0xFFFFFFFF
        table.append(crc)
    return table


_CKSUM_TABLE = _make_cksum_table()


def posix_cksum(data):
    """Return the POSIX `cksum` CRC of `data` (the first number GNU `cksum` prints)."""
    table = _CKSUM_TABLE
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    length = len(data)
    while length:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ (length & 0xFF)]
        length >>= 8
    return crc ^ 0xFFFFFFFF


# --- field helpers ------------------------------------------------------------------

def name_field(text):
    """Encode `text` as a 255-byte field: ASCII, NUL terminator, zero padding."""
    raw = text.encode("ascii")
    if len(raw) > NAME_SIZE - 1 or b"\0" in raw:
        raise ClientFailure(f"name {text!r} does not fit a {NAME_SIZE}-byte field")
    return raw + bytes(NAME_SIZE - len(raw))


def parse_name_field(field):
    """Decode a 255-byte NUL-terminated field; a field with no NUL is malformed."""
    end = field.find(b"\0")
    if end < 0:
        raise ClientFailure("server sent a name field with no NUL terminator")
    return field[:end].decode("ascii", errors="replace")


# --- cryptography -------------------------------------------------------------------

def generate_rsa_key():
    """Make a 1024-bit RSA key pair; return (private key, public key field of 160 bytes)."""
    private_key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT,
                                           key_size=RSA_BITS)
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(der) <= PUBLIC_KEY_SIZE, f"public key DER is {len(der)} bytes"
    return private_key, der + bytes(PUBLIC_KEY_SIZE - len(der))


def decrypt_aes_key(private_key, encrypted):
    """Decrypt the AES key sent by the server (RSA-OAEP, SHA-1, MGF1-SHA-1, no label)."""
    try:
        key = private_key.decrypt(encrypted, asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    except ValueError as err:
        raise ClientFailure(f"cannot decrypt the AES key from the server: {err}") from err
    if len(key) != AES_KEY_SIZE:
        raise ClientFailure(f"AES key from the server is {len(key)} bytes, not {AES_KEY_SIZE}")
    return key


def encrypt_content(aes_key, plaintext):
    """Encrypt file content: AES-128-CBC, IV of 16 zero bytes, PKCS#7 padding."""
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CBC(bytes(16))).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


# --- connection ---------------------------------------------------------------------

class Connection:
    """One logical conversation with the server.

    Reconnects transparently when the server closed the connection (some servers close
    after every reply) and retries a step up to three times after 2107 or no answer.
    """

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.sock = None

    def close(self):
        """Close the TCP connection, if open."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _ensure_connected(self):
        """Open a TCP connection if there is none."""
        if self.sock is None:
            try:
                self.sock = socket.create_connection((self.host, self.port),
                                                     timeout=SOCKET_TIMEOUT)
            except OSError as err:
                raise NoAnswer(f"cannot connect to {self.host}:{self.port}: {err}") from err
            self.sock.settimeout(SOCKET_TIMEOUT)

    def _recv_exact(self, count):
        """Read exactly `count` bytes or raise NoAnswer."""
        chunks = []
        while count:
            try:
                chunk = self.sock.recv(min(count, 65536))
            except OSError as err:
                raise NoAnswer(f"receive failed: {err}") from err
            if not chunk:
                raise NoAnswer("server closed the connection")
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def send_request(self, client_id, code, payload):
        """Send one request (header + payload) without reading any answer."""
        self._ensure_connected()
        header = REQUEST_HEADER.pack(client_id, CLIENT_VERSION, code, len(payload))
        try:
            self.sock.sendall(header + payload)
        except OSError as err:
            raise NoAnswer(f"send failed: {err}") from err

    def read_response(self):
        """Read one response; return (version, code, payload). Any version is accepted."""
        version, code, size = RESPONSE_HEADER.unpack(self._recv_exact(RESPONSE_HEADER.size))
        if size > MAX_RESPONSE_PAYLOAD:
            raise ClientFailure(f"response {code} declares an absurd payload of {size} bytes")
        return version, code, self._recv_exact(size)

    def exchange(self, client_id, code, payload, expected, skip=()):
        """Send a request and return (code, payload) of the first answer in `expected`.

        Answers whose code is in `skip` are read and ignored. On 2107 or no answer the
        request is sent again (on a fresh connection after no answer), up to three times.
        """
        problem = ""
        for _attempt in range(MAX_STEP_ATTEMPTS):
            try:
                self.send_request(client_id, code, payload)
                while True:
                    _version, resp_code, resp_payload = self.read_response()
                    if resp_code not in skip:
                        break
            except NoAnswer as err:
                problem = str(err)
                self.close()
                continue
            if resp_code == RESP_GENERAL_ERROR:
                problem = "server answered 2107 (general error)"
                continue
            if resp_code not in expected:
                raise ClientFailure(f"request {code}: unexpected response code {resp_code}")
            return resp_code, resp_payload
        raise ClientFailure(f"fatal: request {code} failed {MAX_STEP_ATTEMPTS} times "
                            f"(last: {problem})")


# --- protocol steps -----------------------------------------------------------------

def check_id_payload(payload, client_id, what):
    """Check a payload that holds the client id (2104 / 2106 may also be empty)."""
    if payload and payload[:CLIENT_ID_SIZE] != client_id:
        raise ClientFailure(f"{what}: client id {payload[:CLIENT_ID_SIZE].hex()} "
                            f"is not ours ({client_id.hex()})")


def register(conn, name):
    """1025 -> 2100; return the client id the server assigned."""
    code, payload = conn.exchange(ZERO_ID, REQ_REGISTER, name_field(name),
                                  expected={RESP_REGISTERED, RESP_REGISTRATION_FAILED})
    if code == RESP_REGISTRATION_FAILED:
        raise ClientFailure(f"registration of {name!r} refused (2101: name taken?)")
    if len(payload) != CLIENT_ID_SIZE:
        raise ClientFailure(f"2100 payload is {len(payload)} bytes, not {CLIENT_ID_SIZE}")
    print(f"register: ok, name {name}, client id {payload.hex()}", flush=True)
    return payload


def send_public_key(conn, client_id, name, public_key_field, private_key):
    """1026 -> 2102; return the decrypted AES key."""
    _code, payload = conn.exchange(client_id, REQ_PUBLIC_KEY,
                                   name_field(name) + public_key_field,
                                   expected={RESP_AES_KEY})
    if len(payload) <= CLIENT_ID_SIZE:
        raise ClientFailure(f"2102 payload is only {len(payload)} bytes")
    check_id_payload(payload, client_id, "2102")
    aes_key = decrypt_aes_key(private_key, payload[CLIENT_ID_SIZE:])
    print(f"public key: ok, AES key received ({len(payload) - CLIENT_ID_SIZE} "
          f"encrypted bytes)", flush=True)
    return aes_key


def reconnect(conn, client_id, name, private_key):
    """1027 -> 2105; return the decrypted new AES key."""
    code, payload = conn.exchange(client_id, REQ_RECONNECT, name_field(name),
                                  expected={RESP_RECONNECT_OK, RESP_RECONNECT_DENIED})
    if code == RESP_RECONNECT_DENIED:
        raise ClientFailure(f"reconnect of {name!r} denied (2106)")
    if len(payload) <= CLIENT_ID_SIZE:
        raise ClientFailure(f"2105 payload is only {len(payload)} bytes")
    check_id_payload(payload, client_id, "2105")
    aes_key = decrypt_aes_key(private_key, payload[CLIENT_ID_SIZE:])
    print("reconnect: ok, new AES key received", flush=True)
    return aes_key


def send_file(conn, client_id, aes_key, remote_name, plaintext, label, corrupt_budget):
    """Send a file (1028), compare checksums, confirm (1029) or resend (1030) / give up (1031).

    `corrupt_budget` is a one-element list: while positive, the plaintext actually sent is
    altered (a test aid to drive the resend path). Returns True if the server verified.
    """
    expected_cksum = posix_cksum(plaintext)
    field = name_field(remote_name)
    for send_no in range(1, MAX_SENDS + 1):
        data = plaintext
        if corrupt_budget[0] > 0:
            corrupt_budget[0] -= 1
            data = bytes([plaintext[0] ^ 0xFF]) + plaintext[1:] if plaintext else b"\0"
        ciphertext = encrypt_content(aes_key, data)
        payload = struct.pack("<I", len(ciphertext)) + field + ciphertext
        # After a 1030, some servers answer with a 2104 that the spec does not have: skip it.
        skip = {RESP_ACK} if send_no > 1 else ()
        _code, answer = conn.exchange(client_id, REQ_SEND_FILE, payload,
                                      expected={RESP_FILE_RECEIVED}, skip=skip)
        if len(answer) != FILE_RECEIVED.size:
            raise ClientFailure(f"2103 payload is {len(answer)} bytes, not {FILE_RECEIVED.size}")
        resp_id, resp_size, resp_name, resp_cksum = FILE_RECEIVED.unpack(answer)
        check_id_payload(resp_id, client_id, "2103")
        if resp_size != len(ciphertext):
            raise ClientFailure(f"2103 content size {resp_size} != sent {len(ciphertext)}")
        if parse_name_field(resp_name) != remote_name:
            raise ClientFailure(f"2103 file name {parse_name_field(resp_name)!r} "
                                f"!= sent {remote_name!r}")
        if resp_cksum == expected_cksum:
            print(f"{label} send {send_no}: cksum match {resp_cksum}", flush=True)
            _code, ack = conn.exchange(client_id, REQ_CRC_OK, field, expected={RESP_ACK})
            check_id_payload(ack, client_id, "2104")
            print(f"{label} confirm: ok (2104), file {remote_name} verified "
                  f"({len(plaintext)} bytes, cksum {expected_cksum})", flush=True)
            return True
        print(f"{label} send {send_no}: cksum MISMATCH server {resp_cksum} "
              f"local {expected_cksum}", flush=True)
        if send_no < MAX_SENDS:
            try:
                conn.send_request(client_id, REQ_CRC_WRONG_RESEND, field)  # no answer
            except NoAnswer:
                conn.close()  # the next 1028 goes out on a fresh connection
    _code, ack = conn.exchange(client_id, REQ_CRC_WRONG_GIVE_UP, field, expected={RESP_ACK})
    check_id_payload(ack, client_id, "2104")
    print(f"{label} give up: sent 1031 after {MAX_SENDS} wrong checksums (2104)", flush=True)
    return False


# --- identity files -----------------------------------------------------------------

def save_identity(workdir, name, client_id, private_key):
    """Write me.info and priv.key in the peer client's format into `workdir`."""
    os.makedirs(workdir, exist_ok=True)
    der = private_key.private_bytes(serialization.Encoding.DER,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    b64 = base64.b64encode(der).decode("ascii")
    with open(os.path.join(workdir, "me.info"), "w", encoding="ascii") as out:
        out.write(f"{name}\n{client_id.hex()}\n{b64}\n")
    with open(os.path.join(workdir, "priv.key"), "w", encoding="ascii") as out:
        out.write(b64 + "\n")


def load_identity(workdir):
    """Read (name, client id, private key) back from me.info in `workdir`."""
    with open(os.path.join(workdir, "me.info"), encoding="ascii") as src:
        lines = src.read().splitlines()
    name = lines[0]
    client_id = bytes.fromhex(lines[1].replace("-", ""))
    der = base64.b64decode("".join(line.strip() for line in lines[2:]))
    return name, client_id, serialization.load_der_private_key(der, password=None)


# --- main ---------------------------------------------------------------------------

def run(args):
    """Run both sessions; return True if both sends were verified."""
    with open(args.file, "rb") as src:
        plaintext = src.read()
    remote_name = args.remote_name or os.path.basename(args.file)
    corrupt_budget = [args.corrupt_sends]
    port = int(args.port)

    # Session 1: register, send the public key, send the file.
    private_key, public_key_field = generate_rsa_key()
    conn = Connection(args.host, port)
    try:
        client_id = register(conn, args.name)
        aes_key = send_public_key(conn, client_id, args.name, public_key_field, private_key)
        first_ok = send_file(conn, client_id, aes_key, remote_name, plaintext,
                             "session 1", corrupt_budget)
    finally:
        conn.close()
    if not first_ok:
        raise ClientFailure("session 1: the server never reported the right checksum")

    name = args.name
    if args.workdir:
        save_identity(args.workdir, name, client_id, private_key)
        name, client_id, private_key = load_identity(args.workdir)
        print(f"identity: saved to and reloaded from {args.workdir}/me.info", flush=True)

    # Session 2: reconnect on a new connection, send the same file again.
    conn = Connection(args.host, port)
    try:
        aes_key = reconnect(conn, client_id, name, private_key)
        second_ok = send_file(conn, client_id, aes_key, remote_name, plaintext,
                              "session 2", corrupt_budget)
    finally:
        conn.close()
    if not second_ok:
        raise ClientFailure("session 2: the server never reported the right checksum")
    return True


def main(argv=None):
    """Parse the command line, run, and map the outcome to an exit status."""
    parser = argparse.ArgumentParser(description="securexfer reference peer client")
    parser.add_argument("host")
    parser.add_argument("port")
    parser.add_argument("name", help="client name to register (at most 254 ASCII bytes)")
    parser.add_argument("file", help="file to send")
    parser.add_argument("--workdir", help="write me.info / priv.key here after registering, "
                                          "and reload them for the reconnect session")
    parser.add_argument("--remote-name", help="file name to send (default: basename of FILE)")
    parser.add_argument("--corrupt-sends", type=int, default=0, metavar="N",
                        help="test aid: alter the content of the first N sends "
                             "(counted over both sessions) to exercise 1030/1031")
    args = parser.parse_args(argv)
    try:
        run(args)
    except ClientFailure as err:
        print(f"peer_client: FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    except (OSError, ValueError) as err:
        print(f"peer_client: FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    print("result: ok, both sends verified", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
