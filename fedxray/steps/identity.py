"""The `keygen` step: a party's private key file and public site card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedxray import keys
from fedxray.cards import card_bytes
from fedxray.errors import FedxrayError
from fedxray.fsio import check_writable, write_atomic


@dataclass(frozen=True)
class Identity:
    """A party's key file (NAME.key, private) and site card (NAME.pub, public)."""

    identity: keys.PrivateIdentity
    key_path: Path
    card_path: Path
    created: bool

    @property
    def fingerprint(self) -> str:
        return self.identity.public.fingerprint

    def to_dict(self) -> dict:
        return {
            "name": self.identity.name,
            "key": str(self.key_path),
            "card": str(self.card_path),
            "fingerprint": self.fingerprint,
        }


def create_identity(name: str, folder: Path) -> Identity:
    """Create NAME.key (mode 0600) and NAME.pub in ``folder``; a key is never replaced."""
    keys.check_name(name)
    if not folder.is_dir():
        raise FedxrayError(f"output folder does not exist: {folder}")
    key_path, card_path = folder / f"{name}.key", folder / f"{name}.pub"
    if key_path.exists():
        raise FedxrayError(
            f"refusing to overwrite {key_path}", hint="private keys are never replaced"
        )
    check_writable(card_path)
    ident = keys.generate(name)
    keys.save_private_key(ident, key_path)
    write_atomic(card_path, card_bytes(ident))
    return Identity(ident, key_path, card_path, True)


def ensure_identity(name: str, folder: Path) -> Identity:
    """Load NAME.key from folder, or create it (and NAME.pub) if absent."""
    key_path, card_path = folder / f"{name}.key", folder / f"{name}.pub"
    if not key_path.exists():
        return create_identity(name, folder)
    ident = keys.load_private_key(key_path)
    if not card_path.exists():
        write_atomic(card_path, card_bytes(ident))
    return Identity(ident, key_path, card_path, False)
