"""The `evaluate` step: a verified global model on a held-out shard, with bootstrap intervals,
an optional reader comparison and plots."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedxray import distributed
from fedxray.data.pseudonym import image_id, site_secret
from fedxray.data.shard import Shard, check_geometry
from fedxray.data.shard_io import read_shard
from fedxray.errors import FedxrayError
from fedxray.evaluation.bootstrap import DEFAULT_RESAMPLES
from fedxray.evaluation.inference import predict_proba
from fedxray.evaluation.plots import (
    PLOT_FILES,
    PlotsUnavailable,
    plots_for,
    render_png,
    require_matplotlib,
)
from fedxray.evaluation.reference import read_reads_csv
from fedxray.evaluation.report import EvaluationReport, evaluate
from fedxray.fsio import Undo, check_writable, write_atomic
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan
from fedxray.steps.model import LoadedModel, load_model
from fedxray.steps.shared import DEFAULT_BATCH

# progress(stage, done, total); stage is "predict" or "bootstrap".
StageProgress = Callable[[str, int, int], None]


def shard_labels(shard: Shard, plan: Plan, name: str = "shard") -> np.ndarray:
    """The shard's labels as indices into the plan's classes; the shard must fit the model."""
    size = plan.settings.model.image_size
    if shard.image_size != size:
        raise FedxrayError(
            f"{name} holds {shard.image_size} px images but the model takes {size} px",
            hint="prepare the test images again at the model's size",
            option="image_size",
            value=size,
        )
    check_geometry(shard, plan.settings.model.geometry, name)
    classes = list(plan.settings.classes)
    if list(shard.classes) == classes:
        return np.asarray(shard.labels, dtype=np.int64)
    if sorted(shard.classes) != sorted(classes):
        raise FedxrayError(
            f"{name} has classes {', '.join(shard.classes)} but the model predicts "
            f"{', '.join(classes)}",
            hint="prepare the test images again with the plan's classes",
        )
    # Same classes in another order: relabel rather than refuse.
    mapping = np.array([classes.index(c) for c in shard.classes], dtype=np.int64)
    return mapping[np.asarray(shard.labels, dtype=np.int64)]


@dataclass(frozen=True)
class ReaderReads:
    """A reader's labels per shard row (-1: not read) and what to tell about them."""

    labels: np.ndarray
    warnings: list[str]


def reads_for_shard(
    source: bytes | str | os.PathLike,
    shard: Shard,
    classes: Sequence[str],
    identity: PrivateIdentity | None = None,
    name: str = "READS.csv",
) -> ReaderReads:
    """A reader's labels aligned to the shard's rows (-1: not read), and warnings.

    Rows naming a ``file`` are matched through the keyed image id prep gave the file, which
    needs the site key (``identity``) prep used. The path is hashed as written; when that
    matches nothing, leading folders are dropped one at a time (so both ``NORMAL/x.png`` and
    ``/data/test/NORMAL/x.png`` find the image prep read as ``NORMAL/x.png``).
    """
    image_id_of = None
    if identity is not None:
        secret = site_secret(identity)
        known = set() if shard.image_ids is None else {str(i) for i in shard.image_ids}
        random_ids = shard.meta.get("pseudonyms") == "random"

        def image_id_of(path: str) -> str:
            if random_ids:
                raise FedxrayError(
                    "the shard was prepared without a site key, so file names cannot be "
                    "matched to its images",
                    hint="name the images by image_id, or prepare the shard again with the key",
                    option="key",
                )
            parts = [p for p in path.replace("\\", "/").split("/") if p]
            for start in range(len(parts)):
                candidate = image_id(secret, "/".join(parts[start:]))
                if candidate in known:
                    return candidate
            return image_id(secret, path)

    warnings: list[str] = []
    labels = read_reads_csv(
        source,
        classes,
        shard.image_ids,
        image_id_of,
        name=name,
        duplicate_ids=shard.duplicate_ids,
        warn=warnings.append,
    )
    return ReaderReads(labels, warnings)


def evaluate_shard(
    model: LoadedModel,
    shard: Shard,
    *,
    reads: ReaderReads | np.ndarray | None = None,
    n_boot: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    device: str = "cpu",
    name: str = "shard",
    progress: StageProgress | None = None,
) -> EvaluationReport:
    """Run the model on every image of the shard and evaluate it (patients resampled).

    ``reads``: from reads_for_shard; its warnings join the reader comparison's notes.
    """
    labels = shard_labels(shard, model.plan, name)
    reader_warnings: list[str] = []
    if isinstance(reads, ReaderReads):
        reads, reader_warnings = reads.labels, reads.warnings
    probs = predict_proba(
        model.module,
        shard.images,
        batch_size=batch_size,
        device=device,
        view=model.view,
        progress=_stage(progress, "predict"),
    )
    report = evaluate(
        labels,
        probs,
        model.classes,
        groups=shard.patients,
        reader=reads,
        n_boot=n_boot,
        seed=seed,
        progress=_stage(progress, "bootstrap"),
    )
    if report.reader is not None:
        report.reader.notes[:0] = reader_warnings
    return report


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def plot_report(
    report: EvaluationReport, out_dir: str | os.PathLike, *, force: bool = False
) -> list[Path]:
    """Write the ROC curves and the confusion matrix as PNGs into ``out_dir``; return paths.

    Needs matplotlib (optional: ``pip install fedxray[plots]``). Every target is checked
    before anything is drawn, and each file is written atomically.
    """
    require_matplotlib()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FedxrayError(f"not a folder: {out}")
    targets = {k: out / PLOT_FILES[k] for k in plots_for(report)}
    if out.is_dir():
        for path in targets.values():
            check_writable(path, force=force)
    with Undo() as undo:  # all the plots or none (a full disk after the first)
        undo.folder(out)
        for plot, path in targets.items():
            write_atomic(undo.file(path), render_png(report, plot), force=force)
    return list(targets.values())


@dataclass(frozen=True)
class Evaluation:
    """What `fedxray evaluate` found: the report, and about what."""

    report: EvaluationReport
    model: LoadedModel
    shard: Path
    images: int
    reference: Path | None
    plots: list[Path] | None  # None: no plots asked for, or none could be drawn
    plots_note: str | None = None  # why no plots were drawn

    def to_dict(self) -> dict:
        return {
            "model": self.model.describe(),
            "shard": {"file": str(self.shard), "images": self.images},
            "reference": None if self.reference is None else str(self.reference),
            **self.report.to_dict(),
            "plots": None if self.plots is None else [str(p) for p in self.plots],
        }


def evaluate_files(
    model_path: Path,
    shard_path: Path,
    *,
    plan_path: Path | None = None,
    reference: Path | None = None,
    identity: PrivateIdentity | None = None,
    plots: Path | None = None,
    force: bool = False,
    **options,
) -> Evaluation | None:
    """:func:`evaluate_shard` (with its ``options``) on files: the model, verified against
    its plan, the shard, a reader's CSV; the plots, when asked for, go into the folder
    ``plots``. Under torchrun, every rank runs its share of the images and rank 0 alone
    evaluates and writes; the others return None."""
    world = distributed.join(options.get("device", "cpu"))
    if world.distributed:
        options["device"] = str(world.device)
        if not world.leader:
            loaded = load_model(model_path, plan_path)
            predict_proba(loaded.module, read_shard(shard_path).images, view=loaded.view,
                          batch_size=options.get("batch_size", DEFAULT_BATCH),
                          device=options["device"])  # fmt: skip
            return None
    if plots is not None and plots.is_dir():
        for name in PLOT_FILES.values():  # fail before the work, not after it
            check_writable(plots / name, force=force)
    loaded = load_model(model_path, plan_path)
    test = read_shard(shard_path)
    reads = None
    if reference is not None:
        reads = reads_for_shard(reference, test, loaded.classes, identity, name=reference.name)
    report = evaluate_shard(loaded, test, reads=reads, name=shard_path.name, **options)
    written, note = None, None
    if plots is not None:
        try:
            written = plot_report(report, plots, force=force)
        except PlotsUnavailable as e:
            note = f"no plots: {e.message}; to get them: {e.hint}"
    return Evaluation(report, loaded, shard_path, len(test), reference, written, note)
