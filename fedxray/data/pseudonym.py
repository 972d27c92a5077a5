"""Keyed pseudonyms: the same patient or file always maps to the same opaque id at one site.

HMAC-SHA256 under a site secret; without the secret the ids reveal nothing and cannot be
linked to another site's. The secret comes from the site key (``site_secret``) so that
pseudonyms stay stable across runs; without a key prep draws a random one per shard.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fedxray.keys import PrivateIdentity

PSEUDONYM_LABEL = "patient-pseudonym"
HEX_CHARS = 32  # 128 bits: collisions are out of reach for any hospital's archive

# Domain separation so a file path can never produce the same id as a patient token.
_PATIENT = b"fedxray-patient-v1\0"
_IMAGE = b"fedxray-image-v1\0"


def site_secret(identity: PrivateIdentity) -> bytes:
    """The pseudonym secret of a site, derived from its private key file."""
    return identity.derive_secret(PSEUDONYM_LABEL)


def random_secret() -> bytes:
    """A throw-away secret: pseudonyms made with it match nothing made with another."""
    return secrets.token_bytes(32)


def _mac(secret: bytes, domain: bytes, text: str) -> str:
    if len(secret) < 16:
        raise ValueError("pseudonym secret must be at least 16 bytes")
    return hmac.new(secret, domain + text.encode("utf-8"), hashlib.sha256).hexdigest()[:HEX_CHARS]


def patient_pseudonym(secret: bytes, patient_token: str) -> str:
    """32 hex digits standing for one patient (token: DICOM PatientID, file-name token, CSV)."""
    token = patient_token.strip()
    if not token:
        raise ValueError("empty patient token")
    return _mac(secret, _PATIENT, token)


def image_id(secret: bytes, relative_path: str) -> str:
    """32 hex digits standing for one file, from its path relative to the input folder.

    The path is taken with '/' separators, so a reader's CSV written on Windows matches.
    """
    return _mac(secret, _IMAGE, relative_path.replace("\\", "/").strip("/"))
