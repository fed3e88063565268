"""Signed bundles: Ed25519 keys, signatures of a bundle's digest, and their verification.

A fleet agent that runs bundles from the network runs native code (a TVM bundle is a shared
library): ``edgedl serve --trust KEY.pub`` accepts only bundles whose digest (the sha256 of their
``manifest.json``, which lists every file's sha256) is signed by a key it trusts.

    $ edgedl keygen release                 # writes release.key (private, mode 600) and release.pub
    $ edgedl compile lenet.keras -t rpi4 --sign release.key -o lenet.edgedl
    $ edgedl serve --host 0.0.0.0 --trust release.pub

The signature is ``signature.json`` at the bundle's root:
``{"algorithm": "ed25519", "digest": HEX, "public_key": HEX, "signature": HEX}``, where the signed
message is ``b"edgedl-bundle-digest-v1:" + digest`` (so the key signs nothing but bundle digests).
The cryptography is the ``cryptography`` package's; it is imported only when a key is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgedl import _io
from edgedl.errors import InputFileError, MissingDependencyError, OptionError

ALGORITHM = "ed25519"
_PREFIX = b"edgedl-bundle-digest-v1:"


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError("cryptography", "runtime") from None
    return ed25519


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


def generate_keypair(prefix: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """Write a new key pair: ``PREFIX.key`` (private, PEM, mode 600) and ``PREFIX.pub`` (public, PEM).

    Existing key files are never replaced without ``force``.
    """
    if not str(prefix).strip():
        raise OptionError("the key name is empty; give one, e.g. edgedl keygen release")
    prefix = Path(prefix)
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (private, public):
        if p.exists() and not force:
            raise OptionError(f"'{p}' exists; pass --force to replace it (bundles signed with the old key will then "
                              "need the old public key to be trusted)")
        _io.check_writable(p, "key file", kind="file")
    ser = _serialization()
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pub = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    with _io.atomic_path(private) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    _io.write_bytes(public, pub)
    return private, public


def _read_key_file(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    try:
        if p.stat().st_size > 64 << 10:
            raise InputFileError(p, f"is {p.stat().st_size} bytes; not a {what} key file from `edgedl keygen`")
        return p.read_bytes()
    except FileNotFoundError:
        raise InputFileError(p, f"no such {what} key file (make a key pair with: edgedl keygen NAME)") from None
    except IsADirectoryError:
        raise InputFileError(p, f"is a folder; expected a {what} key file from `edgedl keygen`") from None
    except OSError as e:
        raise InputFileError(p, f"cannot read the {what} key ({e.strerror})") from None


def load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in a PEM file written by ``edgedl keygen``."""
    data = _read_key_file(path, "private")
    ser = _serialization()
    if b"PUBLIC KEY" in data:
        raise InputFileError(path, "is a public key; signing needs the private key (the .key file)")
    try:
        key = ser.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise InputFileError(path, f"is not an unencrypted PEM private key ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise InputFileError(path, f"holds a {type(key).__name__}; bundles are signed with Ed25519 keys "
                                   "(edgedl keygen NAME)")
    return key


def load_public_keys(paths) -> list[bytes]:
    """Raw 32-byte Ed25519 public keys from PEM files written by ``edgedl keygen`` (``NAME.pub``)."""
    keys = []
    ser = _serialization() if paths else None
    for path in paths:
        data = _read_key_file(path, "public")
        if b"PRIVATE KEY" in data:
            raise InputFileError(path, "is a private key; trust the public key (the .pub file) and keep the private "
                                       "one off the device")
        try:
            key = ser.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise InputFileError(path, f"is not a PEM public key ({str(e).splitlines()[0][:80]})") from None
        if not isinstance(key, _ed25519().Ed25519PublicKey):
            raise InputFileError(path, f"holds a {type(key).__name__}; edgedl trusts Ed25519 keys (edgedl keygen NAME)")
        keys.append(key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw))
    return keys


def sign_digest(key_path: str | os.PathLike, digest: str) -> bytes:
    """``signature.json``'s bytes: ``digest`` signed with the private key in ``key_path``."""
    key = load_private_key(key_path)
    ser = _serialization()
    sig = key.sign(_PREFIX + digest.encode())
    pub = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    doc = {"algorithm": ALGORITHM, "digest": digest, "public_key": pub.hex(), "signature": sig.hex()}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def parse_signature(data: bytes, where) -> dict:
    """The fields of ``signature.json``, type-checked (a bad one is refused naming the field)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputFileError(where, "signature.json is not valid JSON; refusing the bundle") from None
    if not isinstance(doc, dict):
        raise InputFileError(where, "signature.json must hold a JSON object; refusing the bundle")
    if doc.get("algorithm") != ALGORITHM:
        raise InputFileError(where, f"signature.json: algorithm must be '{ALGORITHM}'; refusing the bundle")
    for field, size in (("digest", 32), ("public_key", 32), ("signature", 64)):
        value = doc.get(field)
        try:
            ok = isinstance(value, str) and len(bytes.fromhex(value)) == size and value == value.lower()
        except ValueError:
            ok = False
        if not ok:
            raise InputFileError(where, f"signature.json: {field} must be {2 * size} lowercase hex digits; "
                                        "refusing the bundle")
    return doc


def key_id(public_key: bytes) -> str:
    """A short, printable name of a public key: the first 16 hex digits of its sha256."""
    import hashlib

    return hashlib.sha256(public_key).hexdigest()[:16]


def verify_signature(data: bytes, digest: str, trusted: list[bytes], where) -> dict:
    """Check ``signature.json`` (``data``) signs ``digest`` with one of the ``trusted`` raw public keys.

    Returns:
        The parsed signature. Raises InputFileError otherwise, saying which check failed.
    """
    doc = parse_signature(data, where)
    if doc["digest"] != digest:
        raise InputFileError(where, "signature.json signs another manifest (its digest differs from this bundle's): "
                                    "the bundle was changed after signing; refusing it")
    pub = bytes.fromhex(doc["public_key"])
    if pub not in trusted:
        raise InputFileError(where, f"the bundle is signed by key {key_id(pub)}, which is not trusted here "
                                    f"(trusted: {', '.join(key_id(k) for k in trusted) or 'none'}); refusing it")
    from cryptography.exceptions import InvalidSignature

    try:
        _ed25519().Ed25519PublicKey.from_public_bytes(pub).verify(bytes.fromhex(doc["signature"]),
                                                                   _PREFIX + digest.encode())
    except InvalidSignature:
        raise InputFileError(where, "signature.json's signature is not valid for this bundle's digest; "
                                    "refusing the bundle") from None
    return doc
