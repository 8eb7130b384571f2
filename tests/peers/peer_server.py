#!/usr/bin/env python3
"""Independent reference server for the securexfer wire protocol (version 3).

Written from /work/shared/PROTOCOL.md only, without looking at the Rust code, so that
the Rust client can be tested against a second implementation.

Usage:
    python3 peer_server.py --port 0 --storage DIR [--once] [--wrong-cksum N]

Binds 127.0.0.1:PORT (0 = ephemeral) and prints `listening on 127.0.0.1:PORT` once bound.
Each verified file (1029) prints `verified NAME SIZE CKSUM`; a client giving up (1031)
prints `gave up NAME`. Everything else (errors, refusals) goes to stderr.
With --once the server exits 0 once the first 1029 has been answered and that
connection has closed.

State lives in memory only (no SQLite); received files are written to
STORAGE/<last path component of the file name>.

Only the standard library and the `cryptography` package are used.
"""

import argparse
import os
import secrets
import socket
import struct
import sys
import threading
import traceback

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# --- protocol constants -------------------------------------------------------------

SERVER_VERSION = 3

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
AES_BLOCK = 16
RSA_BITS = 1024
FILE_HEADER_SIZE = 4 + NAME_SIZE            # content size + file name = 259

# Payload sizes of the fixed-size requests.
FIXED_PAYLOAD_SIZES = {
    REQ_REGISTER: NAME_SIZE,
    REQ_PUBLIC_KEY: NAME_SIZE + PUBLIC_KEY_SIZE,
    REQ_RECONNECT: NAME_SIZE,
    REQ_CRC_OK: NAME_SIZE,
    REQ_CRC_WRONG_RESEND: NAME_SIZE,
    REQ_CRC_WRONG_GIVE_UP: NAME_SIZE,
}

MAX_PAYLOAD = 256 << 20        # refuse anything larger than 256 MiB
CONNECTION_IDLE_TIMEOUT = 120.0


class Malformed(Exception):
    """Malformed input: answer 2107 and close the connection."""


class Refused(Exception):
    """A well-formed request the server cannot handle: answer 2107, keep the connection."""


class PeerClosed(Exception):
    """The peer closed the connection or went silent."""


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

def parse_name_field(field):
    """Decode a 255-byte name field: ASCII text, NUL, padding. No NUL means malformed."""
    end = field.find(b"\0")
    if end < 0:
        raise Malformed("name field has no NUL terminator")
    raw = field[:end]
    if any(b < 0x20 or b >= 0x7F for b in raw):
        raise Malformed(f"name field holds non-ASCII or control bytes: {raw!r}")
    return raw.decode("ascii")


def name_field(text):
    """Encode `text` (at most 254 ASCII bytes) as a NUL-padded 255-byte field."""
    raw = text.encode("ascii")
    return raw + bytes(NAME_SIZE - len(raw))


def storage_name(sent_name):
    """Return the last path component of a sent file name ('/' or '\\' separated).

    Empty, '.' and '..' are refused (control characters are refused by parse_name_field).
    """
    last = sent_name.replace("\\", "/").rsplit("/", 1)[-1]
    if last in ("", ".", ".."):
        raise Malformed(f"unusable file name {sent_name!r}")
    return last


# --- cryptography -------------------------------------------------------------------

def parse_public_key_field(field):
    """Load the RSA public key from a 160-byte field holding zero-padded SPKI DER."""
    if len(field) < 2 or field[0] != 0x30:
        raise Malformed("public key field is not a DER SEQUENCE")
    first = field[1]
    if first < 0x80:
        header, length = 2, first
    elif first == 0x81:
        header, length = 3, field[2]
    elif first == 0x82:
        header, length = 4, (field[2] << 8) | field[3]
    else:
        raise Malformed("public key DER length form not supported")
    total = header + length
    if total > len(field):
        raise Malformed(f"public key DER ({total} bytes) does not fit the field")
    if any(field[total:]):
        raise Malformed("public key field has non-zero bytes after the DER encoding")
    try:
        key = serialization.load_der_public_key(field[:total])
    except (ValueError, TypeError) as err:
        raise Malformed(f"public key does not parse: {err}") from err
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != RSA_BITS:
        raise Malformed("public key is not a 1024-bit RSA key")
    return key


def encrypt_aes_key(public_key, aes_key):
    """Encrypt the AES key for the client: RSA-OAEP, SHA-1, MGF1-SHA-1, empty label."""
    return public_key.encrypt(aes_key, asym_padding.OAEP(
        mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))


def decrypt_content(aes_key, ciphertext):
    """Decrypt AES-128-CBC (zero IV) content and strip PKCS#7 padding strictly."""
    if not ciphertext or len(ciphertext) % AES_BLOCK:
        raise Malformed(f"encrypted content of {len(ciphertext)} bytes is not whole blocks")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(bytes(AES_BLOCK))).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= AES_BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise Malformed("content does not decrypt to valid PKCS#7 padding (wrong key?)")
    return padded[:-pad]


# --- server state -------------------------------------------------------------------

class FileRecord:
    """One received file of a client (keyed by the name the client sent)."""

    def __init__(self, sent_name, stored_name, size, cksum):
        self.sent_name = sent_name
        self.stored_name = stored_name
        self.size = size
        self.cksum = cksum
        self.verified = False


class ClientRecord:
    """A registered client."""

    def __init__(self, client_id, name, registered_on):
        self.client_id = client_id
        self.name = name
        self.registered_on = registered_on  # token of the connection that sent 1025
        self.public_key = None
        self.aes_key = None
        self.files = {}


class ServerState:
    """Everything shared between connection threads; guarded by `lock`."""

    def __init__(self, storage, once, wrong_cksum):
        self.lock = threading.Lock()
        self.storage = storage
        self.once = once
        self.wrong_cksum_budget = wrong_cksum
        self.by_name = {}
        self.by_id = {}
        self.done = threading.Event()

    def new_client_id(self):
        """Return a random 16-byte id not used yet."""
        while True:
            client_id = secrets.token_bytes(CLIENT_ID_SIZE)
            if client_id not in self.by_id and client_id != bytes(CLIENT_ID_SIZE):
                return client_id


def log(message):
    """Write a diagnostic line to stderr."""
    print(f"peer_server: {message}", file=sys.stderr, flush=True)


def response(code, payload=b""):
    """Build a response: version 3, code, payload size, payload."""
    return RESPONSE_HEADER.pack(SERVER_VERSION, code, len(payload)) + payload


# --- connection handling ------------------------------------------------------------

class ConnectionHandler:
    """Serves the requests of one TCP connection, one after the other."""

    def __init__(self, sock, state):
        self.sock = sock
        self.state = state
        self.token = object()          # identifies this connection
        self.client = None             # the client this connection acts for
        self.answered_crc_ok = False

    def recv_exact(self, count, allow_eof=False):
        """Read exactly `count` bytes; return None on a clean EOF if `allow_eof`."""
        chunks = []
        remaining = count
        while remaining:
            try:
                chunk = self.sock.recv(min(remaining, 1 << 16))
            except OSError as err:
                raise PeerClosed(str(err)) from err
            if not chunk:
                if allow_eof and remaining == count:
                    return None
                if remaining == count:
                    raise PeerClosed("connection closed")
                raise Malformed(f"connection closed after {count - remaining} of {count} bytes")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def send(self, data):
        """Send bytes to the peer."""
        try:
            self.sock.sendall(data)
        except OSError as err:
            raise PeerClosed(str(err)) from err

    def run(self):
        """Serve requests until the peer closes; never raise."""
        try:
            self.sock.settimeout(CONNECTION_IDLE_TIMEOUT)
            while self.serve_one():
                pass
        except PeerClosed:
            pass
        except Malformed as err:
            log(f"malformed input, closing connection: {err}")
            self.try_send(response(RESP_GENERAL_ERROR))
        except Exception:  # noqa: BLE001 - the server must survive anything
            log("internal error, closing connection:\n" + traceback.format_exc())
            self.try_send(response(RESP_GENERAL_ERROR))
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            if self.answered_crc_ok and self.state.once:
                self.state.done.set()

    def try_send(self, data):
        """Send, ignoring a peer that has gone."""
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def serve_one(self):
        """Read and answer one request; return False when the peer closed cleanly."""
        header = self.recv_exact(REQUEST_HEADER.size, allow_eof=True)
        if header is None:
            return False
        client_id, _version, code, size = REQUEST_HEADER.unpack(header)  # any version
        if size > MAX_PAYLOAD:
            raise Malformed(f"request {code} declares a payload of {size} bytes")

        if code == REQ_SEND_FILE:
            payload = self.read_file_payload(size)
        elif code in FIXED_PAYLOAD_SIZES:
            if size != FIXED_PAYLOAD_SIZES[code]:
                raise Malformed(f"request {code} payload is {size} bytes, "
                                f"expected {FIXED_PAYLOAD_SIZES[code]}")
            payload = self.recv_exact(size)
        else:
            self.recv_exact(size)
            log(f"unknown request code {code}")
            self.send(response(RESP_GENERAL_ERROR))
            return True

        handler = {
            REQ_REGISTER: self.on_register,
            REQ_PUBLIC_KEY: self.on_public_key,
            REQ_RECONNECT: self.on_reconnect,
            REQ_SEND_FILE: self.on_send_file,
            REQ_CRC_OK: self.on_crc_ok,
            REQ_CRC_WRONG_RESEND: self.on_crc_wrong_resend,
            REQ_CRC_WRONG_GIVE_UP: self.on_crc_give_up,
        }[code]
        try:
            with self.state.lock:
                answer = handler(client_id, payload)
        except Refused as err:
            log(f"request {code} refused: {err}")
            answer = response(RESP_GENERAL_ERROR)
        if answer is not None:
            self.send(answer)
            if code == REQ_CRC_OK:
                self.answered_crc_ok = True
        return True

    def read_file_payload(self, size):
        """Read a 1028 payload under either size convention; return header + content.

        Either the payload size is 4 + 255 + content size, or it is exactly 259 and the
        content (content size > 0) follows right after the declared payload.
        """
        if size < FILE_HEADER_SIZE:
            raise Malformed(f"1028 payload of {size} bytes is shorter than {FILE_HEADER_SIZE}")
        head = self.recv_exact(FILE_HEADER_SIZE)
        content_size = struct.unpack_from("<I", head)[0]
        if size == FILE_HEADER_SIZE + content_size:
            pass
        elif size == FILE_HEADER_SIZE and content_size > 0:
            if content_size > MAX_PAYLOAD:
                raise Malformed(f"1028 content size {content_size} is too large")
        else:
            raise Malformed(f"1028 payload size {size} disagrees with content size "
                            f"{content_size}")
        return head + self.recv_exact(content_size)

    # --- request handlers (called with the state lock held) --------------------------

    def on_register(self, _client_id, payload):
        """1025: register a new name -> 2100 with a fresh id, or 2101."""
        name = parse_name_field(payload)
        if not name or name in self.state.by_name:
            return response(RESP_REGISTRATION_FAILED)
        record = ClientRecord(self.state.new_client_id(), name, self.token)
        self.state.by_name[name] = record
        self.state.by_id[record.client_id] = record
        self.client = record
        return response(RESP_REGISTERED, record.client_id)

    def on_public_key(self, client_id, payload):
        """1026: store the public key, make an AES key -> 2102 id + encrypted key."""
        name = parse_name_field(payload[:NAME_SIZE])
        record = self.state.by_id.get(client_id)
        if record is None or record.name != name:
            raise Refused(f"1026 for unknown id/name {client_id.hex()} {name!r}")
        if record.public_key is not None and record.registered_on is not self.token:
            raise Refused(f"{name!r} already has a public key")
        public_key = parse_public_key_field(payload[NAME_SIZE:])
        record.public_key = public_key
        record.aes_key = secrets.token_bytes(AES_KEY_SIZE)
        self.client = record
        return response(RESP_AES_KEY,
                        record.client_id + encrypt_aes_key(public_key, record.aes_key))

    def on_reconnect(self, client_id, payload):
        """1027: known name with a key -> 2105 id + new encrypted AES key; else 2106."""
        name = parse_name_field(payload)
        record = self.state.by_name.get(name)
        if record is None or record.public_key is None:
            return response(RESP_RECONNECT_DENIED, client_id)
        record.aes_key = secrets.token_bytes(AES_KEY_SIZE)
        self.client = record
        return response(RESP_RECONNECT_OK,
                        record.client_id + encrypt_aes_key(record.public_key, record.aes_key))

    def client_for_file_request(self, client_id):
        """Return the client a file request (1028-1031) acts for.

        Normally the client this connection registered / reconnected as. A connection
        that has not done so (clients that open one connection per request) may act for
        a known client that has an AES key; 1028 must then decrypt with that key.
        """
        if self.client is not None:
            if client_id != self.client.client_id:
                raise Refused(f"client id {client_id.hex()} is not this connection's client")
            return self.client
        record = self.state.by_id.get(client_id)
        if record is None or record.aes_key is None:
            raise Refused(f"no key exchange done for client id {client_id.hex()}")
        return record

    def known_file(self, record, payload):
        """Return the FileRecord named in a 1029/1030/1031 payload."""
        sent_name = parse_name_field(payload)
        file_record = record.files.get(sent_name)
        if file_record is None:
            raise Refused(f"{record.name!r} has sent no file named {sent_name!r}")
        return file_record

    def on_send_file(self, client_id, payload):
        """1028: decrypt, store, checksum -> 2103 id, content size, file name, cksum."""
        record = self.client_for_file_request(client_id)
        sent_name = parse_name_field(payload[4:FILE_HEADER_SIZE])
        stored = storage_name(sent_name)
        ciphertext = payload[FILE_HEADER_SIZE:]
        plaintext = decrypt_content(record.aes_key, ciphertext)
        path = os.path.join(self.state.storage, stored)
        temp = f"{path}.part-{secrets.token_hex(4)}"
        with open(temp, "wb") as out:
            out.write(plaintext)
        os.replace(temp, path)
        cksum = posix_cksum(plaintext)
        record.files[sent_name] = FileRecord(sent_name, stored, len(plaintext), cksum)
        self.client = record
        reported = cksum
        if self.state.wrong_cksum_budget > 0:
            self.state.wrong_cksum_budget -= 1
            reported = cksum ^ 1
            log(f"test aid: reporting wrong cksum {reported} for {sent_name!r}")
        return response(RESP_FILE_RECEIVED, FILE_RECEIVED.pack(
            record.client_id, len(ciphertext), name_field(sent_name), reported))

    def on_crc_ok(self, client_id, payload):
        """1029: record the file as verified -> 2104 id."""
        record = self.client_for_file_request(client_id)
        file_record = self.known_file(record, payload)
        file_record.verified = True
        print(f"verified {file_record.stored_name} {file_record.size} {file_record.cksum}",
              flush=True)
        return response(RESP_ACK, record.client_id)

    def on_crc_wrong_resend(self, client_id, payload):
        """1030: the client will resend; no answer."""
        record = self.client_for_file_request(client_id)
        self.known_file(record, payload)
        return None

    def on_crc_give_up(self, client_id, payload):
        """1031: the client gives up on the file -> 2104 id."""
        record = self.client_for_file_request(client_id)
        file_record = self.known_file(record, payload)
        file_record.verified = False
        print(f"gave up {file_record.stored_name}", flush=True)
        return response(RESP_ACK, record.client_id)


# --- main ---------------------------------------------------------------------------

def serve(args):
    """Bind, announce the port, and accept connections until done."""
    os.makedirs(args.storage, exist_ok=True)
    state = ServerState(args.storage, args.once, args.wrong_cksum)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(16)
    listener.settimeout(0.2)
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    try:
        while not state.done.is_set():
            try:
                sock, _addr = listener.accept()
            except socket.timeout:
                continue
            except OSError as err:
                log(f"accept failed: {err}")
                continue
            sock.setblocking(True)
            handler = ConnectionHandler(sock, state)
            threading.Thread(target=handler.run, daemon=True).start()
    finally:
        listener.close()
    return 0


def main(argv=None):
    """Parse the command line and run the server."""
    parser = argparse.ArgumentParser(description="securexfer reference peer server")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = ephemeral)")
    parser.add_argument("--storage", required=True, help="directory for received files")
    parser.add_argument("--once", action="store_true",
                        help="exit 0 after the first 1029 has been answered and its "
                             "connection closed")
    parser.add_argument("--wrong-cksum", type=int, default=0, metavar="N",
                        help="test aid: report a wrong cksum for the first N files received")
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
