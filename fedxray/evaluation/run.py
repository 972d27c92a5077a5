"""Glue for `fedxray evaluate` and `fedxray predict`: a verified model run on a shard or on files.

The model is only ever loaded after its signature, federation and tensor layout were checked
against the plan. Files go through fedxray.imaging.load_radiograph, the very function prep
uses, so a file gets the same probabilities here as its image does inside a shard.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from fedxray.data.shard import Shard
from fedxray.errors import FedxrayError
from fedxray.evaluation.bootstrap import DEFAULT_RESAMPLES
from fedxray.evaluation.inference import predict_proba, resolve_device
from fedxray.evaluation.report import EvaluationReport, evaluate
from fedxray.fsio import read_input
from fedxray.keys import PrivateIdentity
from fedxray.plan import Plan

DEFAULT_BATCH = 64
STDIN = "-"
# progress(stage, done, total); stage is "predict" or "bootstrap".
StageProgress = Callable[[str, int, int], None]


@dataclass
class LoadedModel:
    """A verified global model, ready to run."""

    module: nn.Module
    plan: Plan
    plan_path: str | None  # where the plan was found (None: $FEDXRAY_PLAN or --plan '-')
    path: str
    round: int
    digest: str  # SHA-256 of the model file

    @property
    def classes(self) -> list[str]:
        return list(self.plan.settings.classes)

    @property
    def image_size(self) -> int:
        return self.plan.settings.model.image_size

    @property
    def in_channels(self) -> int:
        return self.plan.settings.model.in_channels

    def describe(self) -> dict:
        return {
            "file": self.path,
            "sha256": self.digest,
            "round": self.round,
            "arch": self.plan.settings.model.arch,
            "image_size": self.image_size,
            "federation": self.plan.name,
            "federation_id": self.plan.federation_id,
            "plan": self.plan_path,
        }


# ---- model and plan ---------------------------------------------------------------------


def find_plan(
    model_path: str | os.PathLike, model_data: bytes, plan_path: str | os.PathLike | None
) -> tuple[Plan, str | None]:
    """The plan to check the model against: ``plan_path`` / $FEDXRAY_PLAN, else a *.plan file
    next to the model (or in the current folder) naming the model's federation."""
    from fedxray.artifact import read_header
    from fedxray.plan import load_plan

    if plan_path is not None or os.environ.get("FEDXRAY_PLAN"):
        chosen = plan_path or os.environ["FEDXRAY_PLAN"]
        return load_plan(chosen), str(chosen)
    name = Path(str(model_path)).name
    federation = read_header(model_data, name).federation  # the only thing read from it here
    hint = (
        f"pass --plan FILE or set FEDXRAY_PLAN (the model belongs to federation {federation[:12]})"
    )
    if str(model_path) == STDIN:
        raise FedxrayError("no plan given for a model read from standard input", hint=hint)
    folders = [Path(model_path).parent, Path(".")]
    matches: dict[str, Path] = {}  # plan digest -> first file with it
    for folder in folders:
        for candidate in sorted(folder.glob("*.plan")):
            if not candidate.is_file() or _federation_of(candidate) != federation:
                continue
            plan = load_plan(candidate)  # signature and pinned fingerprint are checked here
            matches.setdefault(plan.digest, candidate)
    if not matches:
        where = " or ".join(dict.fromkeys(str(f) for f in folders))
        raise FedxrayError(f"no plan of the model's federation found in {where}", hint=hint)
    if len(matches) > 1:
        found = ", ".join(str(p) for p in matches.values())
        raise FedxrayError(
            f"several different plans name the model's federation: {found}",
            hint="choose one with --plan FILE",
        )
    path = next(iter(matches.values()))
    return load_plan(path), str(path)


def _federation_of(path: Path) -> str | None:
    from fedxray.artifact import peek_header

    header = peek_header(path)  # None: not a readable fedxray file, so not a candidate
    return header.federation if header is not None and header.kind == "plan" else None


def load_model(
    model_path: str | os.PathLike, plan_path: str | os.PathLike | None = None
) -> LoadedModel:
    """Read a .model file, verify it against its plan and build the network from it."""
    from fedxray.modelfile import load_model_artifact
    from fedxray.models.registry import build_model, load_numpy_state

    data = read_input(model_path, "model")
    plan, found = find_plan(model_path, data, plan_path)
    what = "standard input" if str(model_path) == STDIN else Path(str(model_path)).name
    art = load_model_artifact(data, plan, what=what)
    m = plan.settings.model
    module = build_model(m.arch, m.image_size, len(plan.settings.classes), m.in_channels)
    # Writable copies: torch warns (on the user's terminal) about read-only numpy views.
    load_numpy_state(module, {k: np.array(v) for k, v in art.tensors.items()})
    module.eval()
    return LoadedModel(module, plan, found, str(model_path), art.header.round, art.digest)


# ---- evaluate ---------------------------------------------------------------------------


def shard_labels(shard: Shard, plan: Plan, name: str = "shard") -> np.ndarray:
    """The shard's labels as indices into the plan's classes; the shard must fit the model."""
    size = plan.settings.model.image_size
    if shard.image_size != size:
        raise FedxrayError(
            f"{name} holds {shard.image_size} px images but the model takes {size} px",
            hint=f"prepare the test images again with --image-size {size}",
        )
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


def reads_for_shard(
    source: bytes | str | os.PathLike,
    shard: Shard,
    classes: Sequence[str],
    identity: PrivateIdentity | None = None,
    name: str = "READS.csv",
) -> np.ndarray:
    """A reader's labels aligned to the shard's rows (-1: not read).

    Rows naming a ``file`` are matched through the keyed image id prep gave the file, which
    needs the site key (``identity``) prep used. The path is hashed as written; when that
    matches nothing, leading folders are dropped one at a time (so both ``NORMAL/x.png`` and
    ``/data/test/NORMAL/x.png`` find the image prep read as ``NORMAL/x.png``).
    """
    from fedxray.data.pseudonym import image_id, site_secret
    from fedxray.evaluation.reference import read_reads_csv

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
                    hint="name the images by image_id, or prepare the shard again with --key",
                )
            parts = [p for p in path.replace("\\", "/").split("/") if p]
            for start in range(len(parts)):
                candidate = image_id(secret, "/".join(parts[start:]))
                if candidate in known:
                    return candidate
            return image_id(secret, path)

    return read_reads_csv(source, classes, shard.image_ids, image_id_of, name=name)


def evaluate_shard(
    model: LoadedModel,
    shard: Shard,
    *,
    reads: np.ndarray | None = None,
    n_boot: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    device: str = "cpu",
    name: str = "shard",
    progress: StageProgress | None = None,
) -> EvaluationReport:
    """Run the model on every image of the shard and evaluate it (patients resampled)."""
    labels = shard_labels(shard, model.plan, name)
    probs = predict_proba(
        model.module,
        shard.images,
        batch_size=batch_size,
        device=device,
        channels=model.in_channels,
        progress=_stage(progress, "predict"),
    )
    return evaluate(
        labels,
        probs,
        model.classes,
        groups=shard.patients,
        reader=reads,
        n_boot=n_boot,
        seed=seed,
        progress=_stage(progress, "bootstrap"),
    )


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


# ---- predict ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One input file: its probabilities, or why it could not be used."""

    path: Path
    probs: np.ndarray | None  # float32 [K]
    reason: str | None = None  # a fedxray.imaging.SKIP_REASONS key
    message: str | None = None  # detail for the terminal; may quote DICOM attributes

    @property
    def ok(self) -> bool:
        return self.probs is not None


def scan_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly, then every file under each folder (recursively, sorted, hidden
    ones skipped, exactly as prep scans), each file once."""
    from fedxray.data.prep import _scan

    if not inputs:
        raise FedxrayError("no file or folder given")
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise FedxrayError(f"input not found: {p}")
        found = [p] if p.is_file() else [path for path, _ in _scan(p, set())]
        if not found and p.is_dir():
            raise FedxrayError(f"no files found in {p}")
        for f in found:
            real = f.resolve()
            if real not in seen:
                seen.add(real)
                out.append(f)
    return out


def predict_files(
    model: LoadedModel,
    paths: Iterable[Path],
    *,
    batch_size: int = DEFAULT_BATCH,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Prediction]:
    """Predictions for ``paths`` in order, decoded and run ``batch_size`` files at a time.

    Unusable files come back with a reason instead of probabilities; nothing is raised for
    them. ``progress(done, total)`` counts files.
    """
    from fedxray.imaging import SkipImage, load_radiograph

    if batch_size < 1:
        raise FedxrayError(f"batch size must be positive, got {batch_size}")
    # Moved once: predict_proba then finds the model where it runs, batch after batch.
    model.module.to(resolve_device(device))
    paths = list(paths)
    total = len(paths)
    pending: list[tuple[Path, object]] = []  # (path, pixels or SkipImage)
    n_images = 0

    def flush() -> Iterator[Prediction]:
        images = [x for _, x in pending if isinstance(x, np.ndarray)]
        probs = iter(())
        if images:
            probs = iter(
                predict_proba(
                    model.module,
                    np.stack(images),
                    batch_size=len(images),
                    device=device,
                    channels=model.in_channels,
                )
            )
        for path, x in pending:
            if isinstance(x, np.ndarray):
                yield Prediction(path, next(probs))
            else:
                yield Prediction(path, None, x.reason, x.message)
        pending.clear()

    for done, path in enumerate(paths, start=1):
        try:
            pixels = load_radiograph(path, model.image_size).pixels
            pending.append((path, pixels))
            n_images += 1
        except SkipImage as e:
            pending.append((path, e))
        except MemoryError:
            pending.append((path, SkipImage("unreadable", "not enough memory to decode it")))
        if n_images == batch_size:
            yield from flush()
            n_images = 0
        if progress is not None:
            progress(done, total)
    yield from flush()


def prediction_header(classes: Sequence[str]) -> list[str]:
    return ["path", "predicted", *(f"p_{c}" for c in classes), "error"]


def _prob_text(p: np.float32) -> str:
    # The shortest text that reads back as the same float32 value.
    return str(np.float32(p))


def prediction_csv_row(pred: Prediction, classes: Sequence[str]) -> list[str]:
    """Path, predicted class, one probability per class, error (reason code only: the detail
    may quote DICOM attributes, which stay on the terminal)."""
    if not pred.ok:
        return [str(pred.path), "", *([""] * len(classes)), pred.reason or "unreadable"]
    probs = pred.probs
    return [
        str(pred.path),
        classes[int(np.argmax(probs))],
        *(_prob_text(p) for p in probs),
        "",
    ]


def prediction_json(pred: Prediction, classes: Sequence[str]) -> dict:
    if not pred.ok:
        return {
            "path": str(pred.path),
            "predicted": None,
            "probabilities": None,
            "error": pred.reason or "unreadable",
        }
    return {
        "path": str(pred.path),
        "predicted": classes[int(np.argmax(pred.probs))],
        "probabilities": {
            c: float(_prob_text(p)) for c, p in zip(classes, pred.probs, strict=True)
        },
        "error": None,
    }


def format_predictions(
    preds: Iterable[Prediction], classes: Sequence[str], json_lines: bool, header: bool
) -> Iterator[str]:
    """Text chunks of the predict output: CSV (with a header row) or JSON lines."""
    if json_lines:
        for pred in preds:
            yield json.dumps(prediction_json(pred, classes)) + "\n"
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(prediction_header(classes))
    for pred in preds:
        writer.writerow(prediction_csv_row(pred, classes))
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue()
