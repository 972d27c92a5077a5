"""Site cards (.pub): a party's name and public keys, self-signed."""

from __future__ import annotations

from fedxray.artifact import build_artifact, parse_unverified, verify_signature
from fedxray.errors import VerificationError
from fedxray.keys import PrivateIdentity, PublicIdentity


def card_from_bytes(data: bytes, what: str = "site card") -> PublicIdentity:
    """Load a self-signed site card (.pub) and check its signature."""
    art, message = parse_unverified(data, what)
    if art.header.kind != "card":
        raise VerificationError(
            f"{what} is a {art.header.kind!r} file, expected a site card (.pub)"
        )
    ident = PublicIdentity.from_dict(art.header.meta.get("identity", {}))
    if ident.name != art.header.sender:
        raise VerificationError(f"{what}: sender does not match the card's name")
    verify_signature(art, message, ident, what)
    return ident


def card_bytes(ident: PrivateIdentity) -> bytes:
    return build_artifact(
        "card",
        federation="",
        round=0,
        sender=ident.name,
        parent="",
        meta={"identity": ident.public.to_dict()},
        tensors={},
        signer=ident,
    ).data
