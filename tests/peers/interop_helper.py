#!/usr/bin/env python3
"""Cryptography operations done by Python's `cryptography` package, for tests/suite/python_interop.rs.

An independent implementation of the protocol's crypto: RSA-OAEP with SHA-1 and MGF1-SHA-1
(empty label) for the AES key, AES-128-CBC with a zero IV and PKCS#7 for file content.

    interop_helper.py check
    interop_helper.py oaep-decrypt PRIVATE_KEY_BASE64_DER CIPHERTEXT_HEX   -> AES key hex
    interop_helper.py oaep-encrypt SPKI_DER_HEX AES_KEY_HEX                -> ciphertext hex
    interop_helper.py rsa-generate EXPONENT                                -> PKCS#8 base64, SPKI hex
    interop_helper.py aes-encrypt KEY_HEX IN_FILE OUT_FILE
    interop_helper.py aes-decrypt KEY_HEX IN_FILE OUT_FILE

Output goes to stdout, one value per line. Any failure exits non-zero with a message.
"""

import base64
import sys

try:
    import cryptography
    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError as e:
    sys.stderr.write(
        "interop_helper: MISSING-CRYPTOGRAPHY: the Python package `cryptography` is not "
        f"installed ({e}); install it with `pip install cryptography` or "
        "`apt-get install python3-cryptography`\n"
    )
    sys.exit(3)

ZERO_IV = bytes(16)


def oaep():
    return asym_padding.OAEP(
        mgf=asym_padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
    )


def cbc(key_hex):
    return Cipher(algorithms.AES(bytes.fromhex(key_hex)), modes.CBC(ZERO_IV))


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "check":
        print(cryptography.__version__)
    elif command == "oaep-decrypt":
        key = serialization.load_der_private_key(base64.b64decode(args[0]), password=None)
        print(key.decrypt(bytes.fromhex(args[1]), oaep()).hex())
    elif command == "oaep-encrypt":
        key = serialization.load_der_public_key(bytes.fromhex(args[0]))
        print(key.encrypt(bytes.fromhex(args[1]), oaep()).hex())
    elif command == "rsa-generate":
        key = rsa.generate_private_key(public_exponent=int(args[0]), key_size=1024)
        pkcs8 = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        print(base64.b64encode(pkcs8).decode())
        print(spki.hex())
    elif command == "aes-encrypt":
        with open(args[1], "rb") as f:
            data = f.read()
        padder = padding.PKCS7(128).padder()
        padded = padder.update(data) + padder.finalize()
        enc = cbc(args[0]).encryptor()
        with open(args[2], "wb") as f:
            f.write(enc.update(padded) + enc.finalize())
    elif command == "aes-decrypt":
        with open(args[1], "rb") as f:
            data = f.read()
        dec = cbc(args[0]).decryptor()
        padded = dec.update(data) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        with open(args[2], "wb") as f:
            f.write(unpadder.update(padded) + unpadder.finalize())
    else:
        sys.stderr.write(f"interop_helper: unknown command {command!r}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
