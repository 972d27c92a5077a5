"""Drawing an evaluation report: ROC curves and the confusion matrix as PNG images.

Needs matplotlib (the optional ``plots`` extra); only the Agg canvas is used: no pyplot, no GUI
backend, no global state.
"""

from __future__ import annotations

import io

import numpy as np

from fedxray.errors import FedxrayError
from fedxray.evaluation.metrics import BINARY_CURVE, normal_index
from fedxray.evaluation.report import EvaluationReport

PLOT_FILES = {
    "roc": "roc_per_class.png",
    "binary": "roc_binary.png",
    "confusion": "confusion_matrix.png",
}


class PlotsUnavailable(FedxrayError):
    """matplotlib (the optional ``plots`` extra) is not installed."""


def require_matplotlib() -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise PlotsUnavailable(
            "plots need matplotlib, which is not installed", hint="pip install 'fedxray[plots]'"
        ) from None


def plots_for(report: EvaluationReport) -> list[str]:
    """The plots (keys of PLOT_FILES) the report has data for."""
    roc = report.metrics.roc
    wanted = []
    if any(roc.get(c) is not None for c in report.classes):
        wanted.append("roc")
    if roc.get(BINARY_CURVE) is not None:
        wanted.append("binary")
    wanted.append("confusion")
    return wanted


def render_png(report: EvaluationReport, plot: str) -> bytes:
    """One plot of the report as PNG bytes."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5), layout="constrained")
    draw = {"roc": _draw_roc, "binary": _draw_binary, "confusion": _draw_confusion}
    draw[plot](fig.add_subplot(), report)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    return buf.getvalue()


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
