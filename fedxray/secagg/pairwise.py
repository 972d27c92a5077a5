"""Pairwise masks (Bonawitz et al., CCS 2017), set up from the plan's public keys alone.

Sites i and j share K_ij = HKDF-SHA256(X25519(sk_i, pk_j)) bound to the federation and to the
sorted pair of names and keys; nothing travels to set it up. Each round uses a fresh seed
s_ij = HKDF(K_ij, federation, round, cohort), so revealing s_ij (when a peer drops out) says
nothing about other rounds. In round r, site i adds PRG(s_ij) for every peer j named after it
and subtracts it for every peer named before it, so all pair masks cancel in the sum of the
cohort. In strict mode each site also adds a self mask PRG(b_i) from a local per-round secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedxray.errors import VerificationError
from fedxray.keys import PrivateIdentity, PublicIdentity
from fedxray.secagg.prg import SEED_BYTES, MaskStream

_PAIR_INFO = b"fedxray-secagg-pair-v1\0"
_ROUND_INFO = b"fedxray-secagg-round-v1\0"
_SELF_LABEL = "fedxray-secagg-self-mask-v1"


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(secret)


def cohort_digest(sites: Iterable[PublicIdentity]) -> bytes:
    """SHA-256 over the sorted (name, X25519 key) of the round's cohort."""
    h = hashlib.sha256(b"fedxray-secagg-cohort-v1\0")
    for s in sorted(sites, key=lambda s: s.name):
        h.update(s.name.encode() + b"\0" + s.kx_public)
    return h.digest()


def pair_key(me: PrivateIdentity, peer: PublicIdentity, federation_id: str) -> bytes:
    """K_ij: the long-term pair key of ``me`` and ``peer`` in one federation (symmetric)."""
    if peer.name == me.name:
        raise ValueError("a site has no pair key with itself")
    try:
        shared = me.shared_secret(peer)
    except ValueError:  # cryptography refuses low-order points (all-zero shared secret)
        raise VerificationError(f"the key exchange key of {peer.name} is invalid") from None
    a, b = sorted([(me.name, me.public.kx_public), (peer.name, peer.kx_public)])
    # Names cannot contain NUL and keys have a fixed length: the encoding is unambiguous.
    info = (
        _PAIR_INFO
        + federation_id.encode()
        + b"\0"
        + a[0].encode()
        + b"\0"
        + a[1]
        + b[0].encode()
        + b"\0"
        + b[1]
    )
    return _hkdf(shared, info)


def round_seed(key: bytes, federation_id: str, round_number: int, cohort: bytes) -> bytes:
    """s_ij for one round: the only pair secret that a site ever reveals."""
    info = _ROUND_INFO + federation_id.encode() + b"\0" + round_number.to_bytes(8, "big") + cohort
    return _hkdf(key, info)


def pair_seeds(
    me: PrivateIdentity,
    peers: Iterable[PublicIdentity],
    federation_id: str,
    round_number: int,
    cohort: bytes,
) -> dict[str, bytes]:
    """{peer name: s_ij} for every peer (``me`` itself is skipped)."""
    return {
        p.name: round_seed(pair_key(me, p, federation_id), federation_id, round_number, cohort)
        for p in peers
        if p.name != me.name
    }


def self_seed(me: PrivateIdentity, federation_id: str, round_number: int, nonce: bytes) -> bytes:
    """b_i for strict mode: from the site's secret and a random per-round nonce."""
    return me.derive_secret(f"{_SELF_LABEL}:{federation_id}:{round_number}:{nonce.hex()}")


def pair_sign(me: str, peer: str) -> int:
    """+1 if ``me`` adds the pair mask shared with ``peer`` (peer named after me), else -1."""
    if me == peer:
        raise ValueError("a site has no pair mask with itself")
    return 1 if peer > me else -1


def mask_streams(
    me: str, seeds: Mapping[str, bytes], self_mask: bytes | None = None
) -> list[tuple[MaskStream, int]]:
    """The streams a site adds to its encoded update: its pair masks and optional self mask."""
    streams = [(MaskStream(seed), pair_sign(me, peer)) for peer, seed in sorted(seeds.items())]
    if self_mask is not None:
        streams.append((MaskStream(self_mask), 1))
    return streams


def removal_streams(
    survivor: str, revealed: Mapping[str, bytes], self_mask: bytes | None = None
) -> list[tuple[MaskStream, int]]:
    """The streams that undo, in a sum, what ``survivor`` added with the revealed seeds."""
    return [(stream, -sign) for stream, sign in mask_streams(survivor, revealed, self_mask)]
