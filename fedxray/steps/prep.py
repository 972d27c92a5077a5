"""The `prep` step: a site's folders of radiographs -> one de-identified shard file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedxray.data.prep import PrepReport, Progress, prepare
from fedxray.data.pseudonym import site_secret
from fedxray.data.shard import Shard
from fedxray.data.shard_io import shard_bytes, write_shard
from fedxray.data.split import holdout_split
from fedxray.errors import FedxrayError
from fedxray.fsio import check_writable, is_stdio, write_atomic
from fedxray.geometry import DEFAULT_GEOMETRY
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan
from fedxray.steps.shared import ShardFile

HOLDOUT_SUFFIX = ".holdout.shard"


@dataclass(frozen=True)
class Holdout:
    """The patients held out of the training shard (non-members for `fedxray audit`)."""

    fraction: float
    training: ShardFile
    held_out: ShardFile

    def to_dict(self) -> dict:
        return {
            "fraction": self.fraction,
            "training": self.training.to_dict(),
            "held_out": self.held_out.to_dict(),
        }


@dataclass(frozen=True)
class Prepared:
    report: PrepReport  # about every image prepared, before any holdout split
    output: Path
    holdout: Holdout | None = None

    def to_dict(self) -> dict:
        held = None if self.holdout is None else self.holdout.to_dict()
        return {"output": str(self.output), **self.report.to_dict(), "holdout": held}


def holdout_path(output: Path) -> Path:
    """Where the held-out shard goes by default: SITE.shard -> SITE.holdout.shard beside it."""
    stem = output.name.removesuffix(".shard")
    return output.with_name(stem + HOLDOUT_SUFFIX)


def prep_files(
    inputs: Sequence[str | os.PathLike],
    output: Path,
    *,
    image_size: int,
    classes: Sequence[str],
    identity: PrivateIdentity | None = None,
    plan: Plan | None = None,
    label_mode: str | Path = "auto",
    workers: int | None = None,
    keep_duplicates: bool = False,
    holdout: float | None = None,
    holdout_output: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Prepared:
    """Prepare the images under ``inputs`` and write the shard to ``output`` (mode 0600), only
    when everything succeeded. With ``identity`` (a site key, which must be a site of ``plan``
    when one is given) pseudonyms are keyed, the same in every run; else random per shard.
    The images take the plan's geometry (pad without a plan).

    ``holdout``: this fraction of the patients (stratified by class) goes to
    ``holdout_output`` (default: SITE.holdout.shard beside ``output``) and never into
    ``output``. With a site key the same data gives the same split in every run."""
    if identity is not None and plan is not None:
        plan.require_site(identity)
    for path in (output, holdout_output):
        if path is not None and is_stdio(path):
            raise FedxrayError("a shard cannot go to standard output", hint="name a file")
    held_path = None
    if holdout is not None:
        if not 0 < holdout < 1:
            raise FedxrayError(
                f"the fraction of patients to hold out must be between 0 and 1, got {holdout}",
                option="holdout",
            )
        held_path = holdout_output or holdout_path(output)
        if Path(held_path).resolve() == Path(output).resolve():
            raise FedxrayError(
                "the held-out shard and the training shard would be the same file",
                option="holdout_output",
            )
        check_writable(held_path, force=force)
    elif holdout_output is not None:
        raise FedxrayError("a held-out shard needs a fraction to hold out", option="holdout")
    check_writable(output, force=force)  # before the work, not after it
    shard, report = prepare(
        inputs,
        image_size=image_size,
        classes=classes,
        secret=site_secret(identity) if identity is not None else None,
        label_mode=label_mode,
        workers=workers,
        keep_duplicates=keep_duplicates,
        progress=progress,
        geometry=plan.settings.model.geometry if plan is not None else DEFAULT_GEOMETRY,
    )
    if held_path is None:
        write_shard(output, shard, force=force)
        return Prepared(report, output)
    return _write_split(shard, report, output, held_path, holdout, identity, force)


def _holdout_seed(identity: PrivateIdentity | None) -> int:
    """From the site key (the same split in every run), else fresh from the OS."""
    if identity is None:
        return secrets.randbits(63)
    return int.from_bytes(identity.derive_secret("holdout-split", 8), "big")


def _write_split(
    shard: Shard,
    report: PrepReport,
    output: Path,
    held_path: Path,
    fraction: float,
    identity: PrivateIdentity | None,
    force: bool,
) -> Prepared:
    """Split by patient and write both shards, or neither: both are encoded first, and the
    held-out one is removed again if the training shard cannot be written."""
    train, held = holdout_split(shard, fraction, _holdout_seed(identity))
    for part, role in ((train, "training"), (held, "held-out")):
        summary = dict(part.meta.get("report", {}), holdout={"role": role, "fraction": fraction})
        part.meta = {**part.meta, "report": summary}
    train_bytes, held_bytes = shard_bytes(train), shard_bytes(held)
    write_atomic(held_path, held_bytes, force=force, mode=0o600)
    try:
        write_atomic(output, train_bytes, force=force, mode=0o600)
    except BaseException:
        Path(held_path).unlink(missing_ok=True)
        raise
    return Prepared(
        report,
        output,
        Holdout(fraction, ShardFile.of(output, train), ShardFile.of(held_path, held)),
    )
