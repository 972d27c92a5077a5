"""The evaluation report: point estimates with bootstrap intervals, reader comparison, plots."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    BINARY_CURVE,
    PER_CLASS,
    SCALARS,
    Metrics,
    check_inputs,
    compute_metrics,
    normal_index,
    per_class_key,
)
from fedxray.evaluation.reference import ReaderComparison, compare_reader
from fedxray.fsio import check_writable, write_atomic

REPORT_FORMAT = "fedxray-evaluation-v1"
PLOT_FILES = {
    "roc": "roc_per_class.png",
    "binary": "roc_binary.png",
    "confusion": "confusion_matrix.png",
}


class PlotsUnavailable(FedxrayError):
    """matplotlib (the optional ``plots`` extra) is not installed."""


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


def plot_report(
    report: EvaluationReport, out_dir: str | os.PathLike, *, force: bool = False
) -> list[Path]:
    """Write the ROC curves and the confusion matrix as PNGs into ``out_dir``; return paths.

    Needs matplotlib (optional: ``pip install fedxray[plots]``). Every target is checked
    before anything is drawn, and each file is written atomically.
    """
    try:
        # Figure + the Agg canvas directly: no pyplot, no GUI backend, no global state.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(
            "plots need matplotlib, which is not installed", hint="pip install 'fedxray[plots]'"
        ) from None

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FedxrayError(f"not a folder: {out}")
    roc = report.metrics.roc
    wanted = []
    if any(roc.get(c) is not None for c in report.classes):
        wanted.append("roc")
    if roc.get(BINARY_CURVE) is not None:
        wanted.append("binary")
    wanted.append("confusion")
    targets = {k: out / PLOT_FILES[k] for k in wanted}
    if out.is_dir():
        for path in targets.values():
            check_writable(path, force=force)
    else:
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise FedxrayError(f"cannot create folder {out}: {e.strerror}") from None

    def save(fig, path: Path) -> None:
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150)
        write_atomic(path, buf.getvalue(), force=force)

    draw = {"roc": _draw_roc, "binary": _draw_binary, "confusion": _draw_confusion}
    for key, path in targets.items():
        fig = Figure(figsize=(5.5, 5), layout="constrained")
        draw[key](fig.add_subplot(), report)
        save(fig, path)
    return list(targets.values())


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _draw_roc(ax, report: EvaluationReport) -> None:
    for c in report.classes:
        curve = report.metrics.roc.get(c)
        if curve is not None:
            ax.plot(curve.fpr, curve.tpr, linewidth=1.5, label=f"{c} (AUC {_fmt(curve.auc)})")
    _roc_axes(ax, "ROC: each class against the rest")


def _draw_binary(ax, report: EvaluationReport) -> None:
    m = normal_index(report.classes)
    curve = report.metrics.roc[BINARY_CURVE]
    ax.plot(curve.fpr, curve.tpr, linewidth=1.5, label=f"model (AUC {_fmt(curve.auc)})")
    sens, spec = report.value("sensitivity"), report.value("specificity")
    if sens is not None and spec is not None:
        ax.plot([1 - spec], [sens], "o", color="black", label="model, most likely class")
    if report.reader is not None:
        rs = report.reader.reader.values
        if rs["sensitivity"] is not None and rs["specificity"] is not None:
            ax.plot(
                [1 - rs["specificity"]],
                [rs["sensitivity"]],
                "s",
                color="tab:red",
                label=f"reader ({report.reader.n_images} images)",
            )
    _roc_axes(ax, f"ROC: {report.classes[m]} against any other class")


def _draw_confusion(ax, report: EvaluationReport) -> None:
    conf = report.metrics.confusion
    rows = conf.sum(axis=1, keepdims=True)
    share = np.divide(conf, rows, out=np.zeros(conf.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    k = len(report.classes)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.6 else "black"
            text = f"{conf[i, j]}\n{share[i, j]:.0%}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="small")
    ax.set_xticks(range(k), report.classes, rotation=30, ha="right")
    ax.set_yticks(range(k), report.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({report.n_images} images; share of each true class)")
