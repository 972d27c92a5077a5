"""The evaluation report: point estimates with bootstrap intervals and a reader comparison."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedxray.errors import FedxrayError
from fedxray.evaluation.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    Progress,
    bootstrap_ci,
    cluster_index,
)
from fedxray.evaluation.metrics import (
    PER_CLASS,
    SCALARS,
    Metrics,
    check_inputs,
    compute_metrics,
    normal_index,
    per_class_key,
)
from fedxray.evaluation.reference import ReaderComparison, compare_reader

REPORT_FORMAT = "fedxray-evaluation-v1"


@dataclass
class EvaluationReport:
    """Everything ``fedxray evaluate`` reports; ``to_dict()`` is the JSON form."""

    classes: list[str]
    n_images: int
    n_patients: int | None  # None: no pseudonyms, images were resampled
    metrics: Metrics
    intervals: dict[str, Interval] | None  # None when n_boot == 0
    n_boot: int
    seed: int
    level: float
    reader: ReaderComparison | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, name: str) -> float | None:
        return self.metrics.values[name]

    def estimate(self, name: str) -> dict:
        """``{"value": v}`` plus ``low``, ``high``, ``n_valid`` when intervals exist."""
        out: dict = {"value": self.metrics.values[name]}
        if self.intervals is not None:
            out.update(self.intervals[name].to_dict())
        return out

    def to_dict(self) -> dict:
        m = normal_index(self.classes)
        return {
            "format": REPORT_FORMAT,
            "classes": list(self.classes),
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "bootstrap": None
            if self.intervals is None
            else {
                "resamples": self.n_boot,
                "unit": "image" if self.n_patients is None else "patient",
                "confidence": self.level,
                "seed": self.seed,
                "method": "percentile",
            },
            "binary_task": None
            if m is None
            else {
                "negative": self.classes[m],
                "positive": [c for i, c in enumerate(self.classes) if i != m],
                "score": f"1 - p({self.classes[m]})",
            },
            "metrics": {name: self.estimate(name) for name in SCALARS},
            "per_class": {
                c: {"support": self.metrics.support[j]}
                | {k: self.estimate(per_class_key(k, c)) for k in PER_CLASS}
                for j, c in enumerate(self.classes)
            },
            "confusion_matrix": {
                "rows": "true class",
                "columns": "predicted class",
                "counts": self.metrics.confusion.tolist(),
            },
            "roc_curves": {
                k: None if curve is None else curve.to_dict()
                for k, curve in self.metrics.roc.items()
            },
            "reader": None if self.reader is None else self.reader.to_dict(),
            "notes": list(self.notes),
        }


def evaluate(
    y_true,
    probs,
    classes: Sequence[str],
    groups=None,
    reader=None,
    n_boot: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    *,
    level: float = DEFAULT_LEVEL,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Evaluate predicted probabilities [N, K] against labels [N].

    ``groups``: patient pseudonyms [N] (the bootstrap then resamples patients). ``reader``:
    a radiologist's labels [N], -1 where not read. ``n_boot`` 0 skips the intervals.
    ``progress(done, total)`` counts bootstrap resamples.
    """
    y, p, classes = check_inputs(y_true, probs, classes)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise FedxrayError(f"number of bootstrap resamples must be 0 or more, got {n_boot!r}")
    n_boot = int(n_boot)
    n_patients = None
    if groups is not None:
        _, n_patients = cluster_index(groups, len(y))
    metrics = compute_metrics(y, p, classes)
    notes = list(metrics.notes)
    total = n_boot * (1 if reader is None else 2)

    def stage(offset: int) -> Progress | None:
        if progress is None:
            return None
        return lambda done, _n: progress(offset + done, total)

    intervals = None
    if n_boot:
        intervals = bootstrap_ci(
            y, p, classes, groups, n_boot=n_boot, seed=seed, level=level, progress=stage(0)
        )
        notes.extend(_partial_notes(intervals, metrics, n_boot))
    comparison = None
    if reader is not None:
        comparison = compare_reader(
            y,
            p,
            classes,
            reader,
            groups,
            n_boot=n_boot,
            seed=seed,
            level=level,
            progress=stage(n_boot),
        )
    return EvaluationReport(
        classes=classes,
        n_images=len(y),
        n_patients=n_patients,
        metrics=metrics,
        intervals=intervals,
        n_boot=n_boot,
        seed=seed,
        level=level,
        reader=comparison,
        notes=notes,
    )


def _partial_notes(intervals: dict[str, Interval], metrics: Metrics, n_boot: int) -> list[str]:
    """Say which intervals rest on fewer resamples (a rare class missing from some)."""
    short = [
        f"{name} ({iv.n_valid})"
        for name, iv in intervals.items()
        if metrics.values[name] is not None and iv.n_valid < n_boot
    ]
    if not short:
        return []
    return [
        f"some resamples lacked a class, so these intervals use fewer than {n_boot} "
        f"resamples: {', '.join(short)}"
    ]
