"""Site identities: private key files (.key) and public site cards (.pub)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from fedxray.errors import FedxrayError
from fedxray.fsio import is_stdio, read_input, write_atomic

KEY_FORMAT = "fedxray-private-key-v1"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> str:
    """Party names become file names and header fields: keep them plain."""
    if not NAME_RE.match(name) or name in {".", ".."}:
        raise FedxrayError(
            f"invalid name {name!r}",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(s, validate=True)
    except (ValueError, TypeError):
        raise FedxrayError(f"malformed {what}") from None
    if len(raw) != size:
        raise FedxrayError(f"malformed {what}")
    return raw


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def fingerprint(sign_pub: bytes, kx_pub: bytes) -> str:
    """A short code that people compare by phone: 80 bits in five groups of four hex digits."""
    h = hashlib.sha256(b"fedxray-fingerprint-v1\0" + sign_pub + kx_pub).hexdigest()[:20]
    return "-".join(h[i : i + 4] for i in range(0, 20, 4))


@dataclass(frozen=True)
class PublicIdentity:
    """What a site card says: a name and two public keys."""

    name: str
    sign_public: bytes  # Ed25519, raw 32 bytes
    kx_public: bytes  # X25519, raw 32 bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.sign_public, self.kx_public)

    @property
    def verify_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.sign_public)

    @property
    def kx_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.kx_public)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ed25519": _b64(self.sign_public),
            "x25519": _b64(self.kx_public),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PublicIdentity:
        try:
            ident = cls(
                name=check_name(str(d["name"])),
                sign_public=_unb64(d["ed25519"], 32, "Ed25519 public key"),
                kx_public=_unb64(d["x25519"], 32, "X25519 public key"),
            )
        except (KeyError, TypeError):
            raise FedxrayError("malformed site card entry") from None
        if "fingerprint" in d and d["fingerprint"] != ident.fingerprint:
            raise FedxrayError(f"fingerprint of {ident.name} does not match its keys")
        return ident


@dataclass(frozen=True)
class PrivateIdentity:
    """A party's private key material. Lives only in its 0600 .key file and in memory."""

    name: str
    signing_key: Ed25519PrivateKey
    kx_private: X25519PrivateKey
    secret: bytes  # 32 random bytes: root of the site's local secrets (pseudonyms, self-masks)

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(
            self.name,
            _raw_public(self.signing_key.public_key()),
            _raw_public(self.kx_private.public_key()),
        )

    def sign(self, data: bytes) -> bytes:
        return self.signing_key.sign(data)

    def derive_secret(self, label: str, length: int = 32) -> bytes:
        """A purpose-bound secret derived from the site secret (HKDF-SHA256)."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=None,
            info=b"fedxray-local-secret-v1\0" + label.encode(),
        ).derive(self.secret)

    def shared_secret(self, peer: PublicIdentity) -> bytes:
        """Raw X25519 agreement with a peer (callers must pass it through HKDF)."""
        return self.kx_private.exchange(peer.kx_key)

    def to_bytes(self) -> bytes:
        raw = {
            "format": KEY_FORMAT,
            "name": self.name,
            "ed25519": _b64(
                self.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            ),
            "x25519": _b64(
                self.kx_private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            ),
            "secret": _b64(self.secret),
        }
        return (json.dumps(raw, indent=1) + "\n").encode()


def generate(name: str) -> PrivateIdentity:
    return PrivateIdentity(
        check_name(name), Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(32)
    )


def save_private_key(ident: PrivateIdentity, path: str | os.PathLike) -> None:
    """Write a private key: mode 0600, and never over an existing file."""
    write_atomic(path, ident.to_bytes(), mode=0o600, exclusive=True)


def load_private_key(path: str | os.PathLike) -> PrivateIdentity:
    p = Path(path)
    if is_stdio(path):
        raise FedxrayError("private keys are read from a file, not standard input")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FedxrayError(
            f"key file not found: {p}", hint="create one with: fedxray keygen NAME"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FedxrayError(
            f"private key {p} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod 600 {p}",
        )
    data = read_input(p, "key file")
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("format") != KEY_FORMAT:
            raise ValueError
        return PrivateIdentity(
            check_name(str(d["name"])),
            Ed25519PrivateKey.from_private_bytes(_unb64(d["ed25519"], 32, "key file")),
            X25519PrivateKey.from_private_bytes(_unb64(d["x25519"], 32, "key file")),
            _unb64(d["secret"], 32, "key file"),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise key_file_error(path, data) from None


def key_file_error(path: str | os.PathLike, data: bytes) -> FedxrayError:
    """Why a key file did not load, with the hint that fits what the file is."""
    suffix = Path(path).suffix
    if KEY_FORMAT.encode() in data[:200]:
        return FedxrayError(
            f"{path} is a damaged or truncated private key file",
            hint="restore it from its backup; a lost key cannot be made again",
        )
    if suffix == ".pub" or data[8:9] == b"{":  # a site card (a signed safetensors file)
        return FedxrayError(
            f"{path} is not a private key file", hint="public site cards (.pub) cannot sign"
        )
    hint = None if suffix == ".key" else "private keys end in .key"
    return FedxrayError(f"{path} is not a fedxray private key file", hint=hint)
