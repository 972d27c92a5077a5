"""What each party remembers about a round of secure aggregation, as typed records.

A site records which update it masked (and the seeds to redo it) and which closure it revealed
for; the coordinator records the one decision it made for the round. The records keep the
JSON field names of the state files, so files written by earlier versions still load.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Record:
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SiteRound(_Record):
    """A site's round: the update it masked, how, and the closure it answered."""

    update: str  # digest of the update that was masked
    plan: str  # digest of the plan it was masked under
    parent: str  # the global model the update was trained from
    rounding_seed: str  # hex: re-masking the same update gives the same words
    nonce: str | None  # hex, strict mode only: seeds the self mask
    masked: str  # payload hash of the masked file
    masked_at: str
    closure: str | None = None  # the one closure id this site revealed for
    revealed_at: str | None = None


class RoundStatus(enum.Enum):
    OPEN = "open"  # nothing decided yet
    AGGREGATED = "aggregated"  # the survivors are fixed
    UNMASKED = "unmasked"  # the next model was made
    ABANDONED = "abandoned"  # the round was given up; its weights were re-issued


@dataclass(frozen=True)
class CoordinatorRound(_Record):
    """The coordinator's decision for a round, and what became of it."""

    parent: str | None = None  # the global model the round trains from
    closure: str | None = None  # the closure id: set once the survivors are fixed
    needs_reveals: bool | None = None
    survivors: list[str] | None = None
    dropped: list[str] | None = None
    aggregated_at: str | None = None
    unmasked: str | None = None  # digest of the next model
    unmasked_at: str | None = None
    abandoned: bool | None = None
    abandoned_at: str | None = None
    reason: str | None = None

    @property
    def status(self) -> RoundStatus:
        if self.abandoned:
            return RoundStatus.ABANDONED
        if self.unmasked:
            return RoundStatus.UNMASKED
        if self.closure is not None:
            return RoundStatus.AGGREGATED
        return RoundStatus.OPEN
