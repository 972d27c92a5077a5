"""Privacy audit: how much a trained model leaks, next to what the accountant promises.

- ``binomial``: exact binomial tails and Clopper-Pearson bounds;
- ``roc``: attack AUC and TPR at low FPR;
- ``hypothesis``: eps lower bound from a (TPR, FPR) point, threshold chosen on a split;
- ``lira``: membership scores (loss, offline LiRA) and their per-patient means;
- ``one_run``: the one-training-run canary audit (Steinke, Nasr & Jagielski 2023);
- ``canaries``: choosing canary patients, flipping their labels, the coins;
- ``models``: logits of a model, local reference models (torch);
- ``report``: the typed results; ``run``: one call per audit.

Everything runs at the site; nothing is written or sent. Names are imported lazily so that
the pure math does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AuditReport": "fedxray.audit.report",
    "CanaryReport": "fedxray.audit.report",
    "CanarySet": "fedxray.audit.canaries",
    "FedxrayTrainer": "fedxray.audit.models",
    "apply_canaries": "fedxray.audit.canaries",
    "audit_canaries": "fedxray.audit.run",
    "audit_membership": "fedxray.audit.run",
    "draw_canaries": "fedxray.audit.canaries",
    "membership_report": "fedxray.audit.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedxray.audit' has no attribute {name!r}")
