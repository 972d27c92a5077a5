"""One party training alone, all its epochs as one round with a throwaway ledger: the
central baselines of the benchmarks and the audit's reference models (no federation, so
no privacy budget to keep)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from fedxray.data.shard import Shard
from fedxray.training.loop import RoundResult, train_round
from fedxray.training.settings import TrainSettings


def train_alone(
    init_state: dict[str, np.ndarray],
    shard: Shard,
    settings: TrainSettings,
    *,
    name: str,
    device: str = "cpu",
    seed: int | None = None,
    dp: bool = False,
) -> RoundResult:
    """Train ``settings.local_epochs`` epochs from ``init_state`` on ``shard``; ``name``
    labels the throwaway ledger (and its temporary folder)."""
    with tempfile.TemporaryDirectory(prefix=f"fedxray-{name}-") as tmp:
        return train_round(
            init_state,
            shard,
            settings,
            ledger_path=Path(tmp) / f"{name}.ledger",
            federation_id=name,
            round_number=1,
            device=device,
            seed=seed,
            dp=dp,
        )
