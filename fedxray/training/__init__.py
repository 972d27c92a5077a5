"""Local training: DP-SGD engine, privacy accounting and ledger, the round loop.

Names are imported lazily so that reading the ledger (``fedxray privacy``) does not pay
for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Ledger": "fedxray.training.ledger",
    "RoundRow": "fedxray.training.ledger",
    "privacy_rows": "fedxray.training.ledger",
    "RoundResult": "fedxray.training.loop",
    "train_round": "fedxray.training.loop",
    "TrainSettings": "fedxray.training.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedxray.training' has no attribute {name!r}")
