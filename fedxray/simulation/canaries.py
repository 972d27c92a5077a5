"""`simulate --audit-canaries K`: the one-run canary audit (Steinke, Nasr & Jagielski 2023)
at one site of a simulated federation.

Before training, K patients of the site become canaries (every image of theirs gets a wrong
label) and each is trained on or left out by a fair coin (the operating system's entropy,
unless a seed is given). The site trains on what is left. The canaries' images and the coins
are written into the site's folder only: they name the canary patients, so they never travel
(the courier refuses both file kinds). After the last round the site audits the final model
it received, next to the privacy its ledger says it spent.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedxray.audit.canaries import CanarySet, apply_canaries, draw_canaries
from fedxray.audit.run import audit_canaries
from fedxray.data.shard import Shard
from fedxray.data.shard_io import read_shard, write_shard
from fedxray.errors import FedxrayError
from fedxray.fsio import read_input, write_atomic
from fedxray.steps.audit import accountant_epsilon
from fedxray.steps.model import load_model
from fedxray.steps.site_memory import SiteFiles


def canary_files(folder: Path, site: str) -> tuple[Path, Path]:
    """(the canaries' images with their wrong labels, the record of who and which coin)."""
    return folder / f"{site}.canaries.shard", folder / f"{site}.canaries.json"


def plant_canaries(
    shard: Shard, k: int, folder: Path, site: str, seed: int | None = None
) -> tuple[Shard, dict]:
    """The site's training shard with ``k`` coin-flipped canaries, and what to tell about
    them; the canary files are written into ``folder`` (mode 0600)."""
    canaries = draw_canaries(shard, k, seed=seed)
    train, canary_shard = apply_canaries(shard, canaries)
    images_path, record_path = canary_files(folder, site)
    write_shard(images_path, canary_shard)
    record = json.dumps(canaries.to_dict(), indent=1) + "\n"
    write_atomic(record_path, record.encode(), mode=0o600)
    return train, {
        "site": site,
        "canaries": len(canaries),
        "included": sum(canaries.included),
        "coins": canaries.source,
        "images": len(train),
        "patients": train.num_patients,
    }


def audit_site(folder: Path, site: str, model_path: Path, plan_path: Path, device="cpu") -> dict:
    """The one-run audit of the model at ``model_path``, run at the site (its key, ledger
    and canaries in ``folder``), against what its ledger says it spent."""
    ledger_path = SiteFiles.beside_key(folder / f"{site}.key").ledger
    images_path, record_path = canary_files(folder, site)
    try:
        canaries = CanarySet.from_dict(json.loads(read_input(record_path, "canary record")))
    except ValueError:
        raise FedxrayError(f"the canary record {record_path} is not valid JSON") from None
    loaded = load_model(model_path, plan_path)
    accountant = accountant_epsilon(loaded.plan, loaded.round, ledger_path)
    report = audit_canaries(
        loaded.module,
        read_shard(images_path),
        canaries,
        delta=loaded.plan.settings.dp.delta,
        accountant_epsilon=accountant.epsilon,
        device=device,
        view=loaded.view,
    )
    return {
        "site": site,
        "model": Path(model_path).name,
        "accountant": accountant.to_dict(),
        **report.to_dict(),
    }
