"""Replay instead of double counting: each epoch's randomness comes from a seed recorded in
the ledger before the epoch runs, so a rerun after a crash can run the SAME mechanism with
the SAME randomness on the SAME inputs, and release exactly what the first attempt would
have released: counted once (docs/privacy.md, "Crashes and re-runs").

An epoch's ledger record holds its 256-bit seed and the hashes of its inputs: the global
model, the settings, the shard, the noise multiplier and the state the epoch starts from. A
record is replayed only when all of them match; otherwise (a checkpoint gone, another shard
or settings) the record is abandoned, stays counted, and the epoch runs again with a FRESH
seed: the same noise on different inputs would let the two results be subtracted.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable

import numpy as np

from fedxray.training import accounting
from fedxray.training.ledger import ABANDONED, DONE, STARTED, Ledger

# The inputs an epoch's record pins, and how a message names each.
INPUTS = {
    "global_sha256": "the global model",
    "settings_sha256": "the plan's training settings",
    "shard_sha256": "the shard",
    "dp": "differential privacy (on or off)",
    "noise_multiplier": "the noise multiplier",
}


def epoch_seed(
    explicit: int | None, federation_id: str, round_number: int, epoch: int, attempt: int
) -> str:
    """A new epoch's seed (64 hex digits): fresh OS entropy, or, for reproducible experiments,
    derived from ``explicit`` and the epoch's place (never the same for two attempts)."""
    if explicit is None:
        return secrets.token_hex(32)
    where = json.dumps([int(explicit), federation_id, int(round_number), int(epoch), attempt])
    return hashlib.sha256(b"fedxray-epoch-seed-v1\0" + where.encode()).hexdigest()


def epoch_streams(seed: str) -> tuple[np.random.Generator, int, np.random.SeedSequence]:
    """An epoch's independent streams from its recorded seed: (sampling generator, seed of
    the augmentation's torch generator, noise seed sequence for dp_engine.NoiseGenerator).

    Sampling and noise must stay secret (they carry the guarantee); augmentation need not.
    """
    root = np.random.SeedSequence(int(seed, 16), pool_size=8)  # all 256 bits of the seed
    sampling, augmentation, noise = root.spawn(3)
    rng = np.random.Generator(np.random.PCG64DXSM(sampling))
    return rng, int(augmentation.generate_state(1, np.uint64)[0] >> np.uint64(1)), noise


class RoundReplay:
    """The ledger's records of one round, epoch by epoch: which to replay, which to count.

    ``inputs`` maps the keys of INPUTS to this run's values; ``save`` writes the ledger;
    ``check_extra`` refuses (BudgetExceededError) one more counted epoch than planned.
    """

    def __init__(
        self,
        ledger: Ledger,
        round_number: int,
        inputs: dict,
        *,
        steps: int,
        sample_rate: float,
        seed: int | None,
        save: Callable[[], None],
        check_extra: Callable[[], None],
    ):
        self.ledger, self.round, self.inputs = ledger, int(round_number), dict(inputs)
        self.steps, self.sample_rate, self.explicit_seed = steps, sample_rate, seed
        self.save, self.check_extra = save, check_extra
        self.allowed = 0  # fresh epochs the budget check before training allowed
        self.counted = 0
        self.abandoned: list[tuple[dict, str]] = []

    # -- what the ledger holds ---------------------------------------------------------------
    def latest(self, epoch: int) -> dict | None:
        """The epoch's current record: its last attempt (None when never started)."""
        mine = [e for e in self.ledger.entries(self.round) if e["epoch"] == epoch]
        return mine[-1] if mine else None

    def chain_ids(self, epochs: int) -> list[str | None]:
        """Ids of the records a checkpoint after ``epochs`` epochs embodies."""
        return [(e or {}).get("id") for e in map(self.latest, range(1, epochs + 1))]

    def why_not(self, entry: dict, start_sha256: str) -> str | None:
        """Why ``entry`` cannot be replayed from a state hashing to ``start_sha256``."""
        if entry["status"] == ABANDONED:
            return "it was abandoned"
        if not entry.get("inputs"):
            return "it was recorded without a seed (by an older fedxray)"
        if entry.get("seed") is None:
            return "its seed was erased when the round finished and its checkpoint is gone"
        recorded = entry.get("inputs", {})
        for key, what in INPUTS.items():
            if recorded.get(key) != self.inputs[key]:
                return f"{what} changed since it was started"
        if recorded.get("start_sha256") != start_sha256:
            return "the state it started from (the previous epoch's checkpoint) is gone or differs"
        return None

    def fresh_epochs(self, first: int, last: int, start_sha256: str) -> int:
        """How many of epochs ``first``..``last`` will be counted anew (the rest replay).

        Once one epoch runs with a fresh seed, every later one starts from a new state."""
        fresh = 0
        for epoch in range(first, last + 1):
            entry = self.latest(epoch)
            # Later epochs start where the replayed ones end: as recorded, if all goes well.
            recorded_start = ((entry or {}).get("inputs") or {}).get("start_sha256")
            start = start_sha256 if epoch == first else recorded_start
            if fresh or entry is None or self.why_not(entry, start) is not None:
                fresh += 1
        self.allowed = fresh
        return fresh

    # -- changes -----------------------------------------------------------------------------
    def adopt(self, epoch: int, result_sha256: str) -> bool:
        """A checkpoint after ``epoch`` matched the records: an unfinished record is done
        (the crash hit between the checkpoint and the ledger). False if its hash differs."""
        entry = self.latest(epoch)
        if entry is None:
            return False
        if entry["status"] == DONE:
            recorded = entry.get("result_sha256")
            return recorded is None or recorded == result_sha256
        if entry["status"] == STARTED:
            self.ledger.mark_done(entry, result_sha256)
            self.save()
            return True
        return False

    def begin(self, epoch: int, start_sha256: str) -> tuple[dict, bool]:
        """The record to run ``epoch`` with, and whether it is a replay. A new record is
        written (and counted) before the epoch runs; a replay is not counted again."""
        entry = self.latest(epoch)
        if entry is not None:
            why = self.why_not(entry, start_sha256)
            if why is None:
                return entry, True
            self.recount(entry, why)
        return self.fresh(epoch, start_sha256), False

    def recount(self, entry: dict, why: str) -> None:
        """Give up on replaying ``entry`` (it stays counted)."""
        if entry["status"] != ABANDONED:
            self.ledger.abandon(entry, why)
            self.abandoned.append((entry, why))

    def fresh(self, epoch: int, start_sha256: str) -> dict:
        if self.counted >= self.allowed:
            self.check_extra()
        attempt = sum(1 for e in self.ledger.entries(self.round) if e["epoch"] == epoch)
        entry = self.ledger.record_epoch(
            round_number=self.round,
            epoch=epoch,
            steps=self.steps,
            noise_multiplier=self.inputs["noise_multiplier"],
            sample_rate=self.sample_rate,
            seed=epoch_seed(self.explicit_seed, self.ledger.federation_id, self.round, epoch,
                            attempt),
            inputs={**self.inputs, "start_sha256": start_sha256},
        )  # fmt: skip
        self.save()  # write-ahead: counted before any of its results exist
        self.counted += 1
        return entry

    def done(self, entry: dict, result_sha256: str) -> None:
        if entry["status"] != DONE:
            self.ledger.mark_done(entry, result_sha256)
            self.save()

    def replay_matches(self, entry: dict, result_sha256: str) -> bool:
        """Whether a replayed epoch gave the result recorded when it first finished."""
        recorded = entry.get("result_sha256")
        return recorded is None or recorded == result_sha256

    def finish(self) -> None:
        if not self.ledger.round_finished(self.round):
            self.ledger.finish_round(self.round)
            self.save()

    def warnings(self) -> list[str]:
        """What counting epochs again cost, and why (empty when every replay worked)."""
        if not self.abandoned:
            return []
        lines = [
            f"epoch {e['epoch']} of round {self.round} could not be replayed ({why}): "
            "it was trained again with fresh randomness and counted again"
            for e, why in self.abandoned
        ]
        if self.inputs["dp"]:
            gone = {e["id"] for e, _ in self.abandoned}
            kept = [
                (h["noise_multiplier"], h["sample_rate"], h["steps"])
                for h in self.ledger.entries()
                if h["dp"] and h["id"] not in gone
            ]
            now, without = self.ledger.epsilon(), accounting.epsilon(kept, self.ledger.delta)
            lines.append(
                f"epsilon of this federation is {accounting.epsilon_text(now)} instead of "
                f"{accounting.epsilon_text(without)} (+{accounting.epsilon_text(now - without)}) "
                "because of the epochs counted again"
            )
        return lines
