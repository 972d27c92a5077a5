"""The `keygen` step: a party's private key file and public site card."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from fedxray import keys
from fedxray.cards import card_bytes
from fedxray.errors import FedxrayError
from fedxray.fsio import Undo, check_writable, write_atomic


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
    ident = new_identity(name, folder)
    save_identity(ident)
    return ident


def new_identity(name: str, folder: Path) -> Identity:
    """A fresh identity for NAME.key and NAME.pub in ``folder``, in memory only: nothing is
    written until :func:`save_identity`. Refused where NAME.key or NAME.pub exists."""
    key_path, card_path = folder / f"{name}.key", folder / f"{name}.pub"
    if key_path.exists():
        raise FedxrayError(
            f"refusing to overwrite {key_path}", hint="private keys are never replaced"
        )
    if folder.is_dir():
        check_writable(card_path)
    return Identity(keys.generate(name), key_path, card_path, True)


def save_identity(ident: Identity, undo: Undo | None = None) -> None:
    """Write a new identity's key, then its card; a failure removes what it wrote."""
    with Undo() if undo is None else contextlib.nullcontext(undo) as files:
        keys.save_private_key(ident.identity, files.file(ident.key_path))
        write_atomic(files.file(ident.card_path), card_bytes(ident.identity))


def coordinator_identity(name: str, folder: Path) -> Identity:
    """NAME.key from ``folder`` when it exists, else a new identity not yet written
    (``created``: the caller saves it, with :func:`save_identity`, once all else succeeded)."""
    key_path, card_path = folder / f"{name}.key", folder / f"{name}.pub"
    if not key_path.exists():
        return new_identity(name, folder)
    return Identity(keys.load_private_key(key_path), key_path, card_path, False)
