"""The `prep` step: a site's folders of radiographs -> one de-identified shard file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedxray.data.prep import PrepReport, Progress, prepare
from fedxray.data.pseudonym import site_secret
from fedxray.data.shard_io import write_shard
from fedxray.errors import FedxrayError
from fedxray.fsio import check_writable, is_stdio
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan


@dataclass(frozen=True)
class Prepared:
    report: PrepReport
    output: Path

    def to_dict(self) -> dict:
        return {"output": str(self.output), **self.report.to_dict()}


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
    force: bool = False,
    progress: Progress | None = None,
) -> Prepared:
    """Prepare the images under ``inputs`` and write the shard to ``output`` (mode 0600), only
    when everything succeeded. With ``identity`` (a site key, which must be a site of ``plan``
    when one is given) pseudonyms are keyed, the same in every run; else random per shard."""
    if identity is not None and plan is not None:
        plan.require_site(identity)
    if is_stdio(output):
        raise FedxrayError("a shard cannot go to standard output", hint="name a file")
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
    )
    write_shard(output, shard, force=force)
    return Prepared(report, output)
