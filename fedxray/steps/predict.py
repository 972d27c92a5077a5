"""The `predict` step: class probabilities for radiograph files, CSV or JSON lines.

Files go through fedxray.imaging.load_radiograph, the very function prep uses, so a file gets
the same probabilities here as its image does inside a shard. Every prediction carries an
out-of-distribution flag: the image failed a plausibility check (it is not like a
radiograph), or the model's confidence is below the threshold (it cannot tell the classes
apart for this image). Neither needs anything from any site's training data.
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

from fedxray import distributed
from fedxray.data.scan import scan_files
from fedxray.devices import resolve_device
from fedxray.errors import FedxrayError
from fedxray.evaluation.confidence import MIN_CONFIDENCE, confidence
from fedxray.evaluation.inference import predict_proba
from fedxray.imaging import Radiograph, SkipImage, Verdict, load_radiograph
from fedxray.steps.model import LoadedModel
from fedxray.steps.shared import DEFAULT_BATCH

LOW_CONFIDENCE = "low-confidence"  # the reason code of the confidence flag


@dataclass(frozen=True)
class Prediction:
    """One input file: its probabilities and out-of-distribution flag, or why it could not
    be used."""

    path: Path
    probs: np.ndarray | None  # float32 [K]
    reason: str | None = None  # a fedxray.imaging.SKIP_REASONS key
    message: str | None = None  # detail for the terminal; may quote DICOM attributes
    verdict: Verdict | None = None  # the image's plausibility checks
    min_confidence: float = MIN_CONFIDENCE

    @property
    def ok(self) -> bool:
        return self.probs is not None

    @property
    def confidence(self) -> float | None:
        return None if self.probs is None else float(confidence(self.probs))

    @property
    def ood_reasons(self) -> list[str]:
        """Why the image looks out of distribution: failed plausibility checks (size,
        greyscale, blank, noise, smooth), then low-confidence; empty when it does not."""
        if not self.ok:
            return []
        out = [] if self.verdict is None else [f.check for f in self.verdict.failures]
        if self.confidence < self.min_confidence:
            out.append(LOW_CONFIDENCE)
        return list(dict.fromkeys(out))

    @property
    def ood(self) -> bool | None:
        return bool(self.ood_reasons) if self.ok else None

    @property
    def ood_message(self) -> str:
        """The flag in words, for the terminal."""
        parts = [self.verdict.message] if self.verdict is not None and not self.verdict.ok else []
        if LOW_CONFIDENCE in self.ood_reasons:
            parts.append(
                f"the model is unsure (confidence {self.confidence:.3f} < {self.min_confidence})"
            )
        return "; ".join(parts)


def scan_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly, then every file under each folder (recursively, sorted, hidden
    ones skipped, exactly as prep scans), each file once."""
    if not inputs:
        raise FedxrayError("no file or folder given")
    out: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise FedxrayError(f"input not found: {p}")
        found = scan_files(p, set())
        if not found and p.is_dir():
            raise FedxrayError(f"no files found in {p}")
        for f in found:
            real = f.real or f.path  # a link loop: kept, decoding reports it as unreadable
            if real not in seen:
                seen.add(real)
                out.append(f.path)
    return out


def predict_files(
    model: LoadedModel,
    paths: Iterable[Path],
    *,
    batch_size: int = DEFAULT_BATCH,
    device: str = "cpu",
    min_confidence: float = MIN_CONFIDENCE,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Prediction]:
    """Predictions for ``paths`` in order, decoded and run ``batch_size`` files at a time.

    Unusable files come back with a reason instead of probabilities; nothing is raised for
    them. A prediction whose confidence is below ``min_confidence`` (0 to 1) is flagged.
    ``progress(done, total)`` counts files.
    """
    if batch_size < 1:
        raise FedxrayError(f"batch size must be positive, got {batch_size}")
    if not 0 <= min_confidence <= 1:
        raise FedxrayError(
            f"the confidence threshold must be in [0, 1], got {min_confidence}",
            option="min_confidence",
        )
    world = distributed.join(device)
    device = str(world.device) if world.distributed else device
    # Moved once: predict_proba then finds the model where it runs, batch after batch.
    model.module.to(resolve_device(device))
    paths = list(paths)
    total = len(paths)
    pending: list[tuple[Path, object]] = []  # (path, Radiograph or SkipImage)
    n_images = 0

    def flush() -> Iterator[Prediction]:
        images = [x.pixels for _, x in pending if isinstance(x, Radiograph)]
        probs = iter(())
        if images:
            probs = iter(
                predict_proba(
                    model.module,
                    np.stack(images),
                    batch_size=len(images),
                    device=device,
                    view=model.view,
                )
            )
        for path, x in pending:
            if isinstance(x, Radiograph):
                yield Prediction(
                    path, next(probs), verdict=x.plausibility, min_confidence=min_confidence
                )
            else:
                yield Prediction(path, None, x.reason, x.message)
        pending.clear()

    for done, path in enumerate(paths, start=1):
        try:
            pending.append((path, load_radiograph(path, model.image_size, model.geometry)))
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
    return ["path", "predicted", *(f"p_{c}" for c in classes), "confidence", "ood",
            "ood_reasons", "error"]  # fmt: skip


def _prob_text(p: np.float32) -> str:
    # The shortest text that reads back as the same float32 value.
    return str(np.float32(p))


def prediction_csv_row(pred: Prediction, classes: Sequence[str]) -> list[str]:
    """Path, predicted class, one probability per class, error (reason code only: the detail
    may quote DICOM attributes, which stay on the terminal)."""
    if not pred.ok:
        return [str(pred.path), "", *([""] * (len(classes) + 3)), pred.reason or "unreadable"]
    probs = pred.probs
    return [
        str(pred.path),
        classes[int(np.argmax(probs))],
        *(_prob_text(p) for p in probs),
        f"{pred.confidence:.4f}",
        "yes" if pred.ood else "no",
        ";".join(pred.ood_reasons),
        "",
    ]


def prediction_json(pred: Prediction, classes: Sequence[str]) -> dict:
    if not pred.ok:
        return {
            "path": str(pred.path),
            "predicted": None,
            "probabilities": None,
            "confidence": None,
            "ood": None,
            "ood_reasons": None,
            "error": pred.reason or "unreadable",
        }
    return {
        "path": str(pred.path),
        "predicted": classes[int(np.argmax(pred.probs))],
        "probabilities": {
            c: float(_prob_text(p)) for c, p in zip(classes, pred.probs, strict=True)
        },
        "confidence": round(pred.confidence, 4),
        "ood": pred.ood,
        "ood_reasons": pred.ood_reasons,
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
