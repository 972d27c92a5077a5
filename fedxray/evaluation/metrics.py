"""Classification metrics from true labels and predicted probabilities (pure numpy).

Every scalar metric is computed from per-image weights, so one code path serves both the point
estimate (every weight 1) and the bootstrap (weight = how often a resample drew the image).
Undefined values (0/0: a class absent, a single class) are NaN here and ``None`` in results,
each explained by a note; nothing raises on degenerate data, only on malformed input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedxray.errors import FedxrayError

NORMAL = "normal"

# Scalar metrics over the whole test set, in report order.
SCALARS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_roc_auc",
    "binary_roc_auc",
    "sensitivity",
    "specificity",
    "mcc",
    "kappa",
)
PER_CLASS = ("precision", "recall", "f1", "roc_auc")
AUC_METRICS = ("macro_roc_auc", "binary_roc_auc", "roc_auc")
BINARY_CURVE = "binary"

# Probabilities are softmax outputs (often float32): tolerate rounding, not other scales.
_PROB_TOL = 1e-3


def per_class_key(metric: str, cls: str) -> str:
    """Flat name of a per-class metric, e.g. ``recall/viral``."""
    return f"{metric}/{cls}"


def metric_names(classes: Sequence[str]) -> list[str]:
    """Every scalar metric name (whole-set ones, then per class)."""
    return list(SCALARS) + [per_class_key(m, c) for c in classes for m in PER_CLASS]


def normal_index(classes: Sequence[str]) -> int | None:
    """Index of the class named 'normal' (any case): the negative of the binary task."""
    hits = [i for i, c in enumerate(classes) if str(c).strip().lower() == NORMAL]
    return hits[0] if len(hits) == 1 else None


def check_classes(classes: Sequence[str]) -> list[str]:
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise FedxrayError(f"need at least two classes, got {len(classes)}")
    if len(set(classes)) != len(classes):
        raise FedxrayError(f"class names repeat: {', '.join(classes)}")
    return classes


def check_labels(labels, n_classes: int, what: str = "labels") -> np.ndarray:
    """Integer class indices [N] in range; anything else is a caller error."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise FedxrayError(f"{what} must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise FedxrayError(f"{what} must be integer class indices, got {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise FedxrayError(
            f"{what} out of range 0..{n_classes - 1}: {int(bad.sum())} value(s), "
            f"e.g. {int(y[bad][0])}"
        )
    return y


def check_inputs(y_true, probs, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Validate and normalise (labels int64 [N], probabilities float64 [N, K], classes)."""
    classes = check_classes(classes)
    k = len(classes)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != k:
        raise FedxrayError(f"probabilities must have shape [N, {k}], got {list(p.shape)}")
    y = check_labels(y_true, k)
    if len(y) != len(p):
        raise FedxrayError(f"{len(y)} labels but {len(p)} rows of probabilities")
    if len(y) == 0:
        raise FedxrayError("nothing to evaluate: no images")
    if not np.isfinite(p).all():
        raise FedxrayError("probabilities contain NaN or infinity")
    if (p < -_PROB_TOL).any() or (p > 1 + _PROB_TOL).any():
        raise FedxrayError(
            "probabilities must lie in [0, 1]", hint="pass softmax outputs, not logits"
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1) > _PROB_TOL
    if off.any():
        raise FedxrayError(
            f"probabilities must sum to 1 per image: {int(off.sum())} row(s) do not "
            f"(e.g. {float(sums[off][0]):.4f})",
            hint="pass softmax outputs, not logits",
        )
    return y, p, classes


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [K, K]: rows are true classes, columns predicted classes."""
    cell = np.asarray(y_true, np.int64) * n_classes + np.asarray(y_pred, np.int64)
    return np.bincount(cell, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN (undefined) where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over defined entries; NaN (without a warning) where none is defined."""
    ok = ~np.isnan(x)
    return _div(np.where(ok, x, 0.0).sum(axis=axis), ok.sum(axis=axis))


class _AucSorter:
    """Mann-Whitney AUC for many weight vectors at once, scores sorted once.

    AUC = P(score_pos > score_neg) + 0.5 P(tie), each pair weighted by w_pos * w_neg. Equal
    scores form groups; a positive's credit is the negative weight strictly below its group
    plus half the negative weight inside it. This equals the trapezoid area under the ROC.
    """

    def __init__(self, positive: np.ndarray, scores: np.ndarray):
        order = np.argsort(scores, kind="stable")
        s = scores[order]
        n = len(s)
        new = np.empty(n, dtype=bool)
        new[:1] = True
        new[1:] = s[1:] != s[:-1]
        group = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], n)
        self.order = order
        self.pos = positive[order].astype(np.float64)
        self.start = starts[group]
        self.end = ends[group]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        w = weights[:, self.order]
        wp = w * self.pos
        wn = w - wp
        cum = np.zeros((w.shape[0], w.shape[1] + 1))
        np.cumsum(wn, axis=1, out=cum[:, 1:])
        below = cum[:, self.start]
        tied = cum[:, self.end] - below
        num = (wp * (below + 0.5 * tied)).sum(axis=1)
        return _div(num, wp.sum(axis=1) * wn.sum(axis=1))


class WeightedScorer:
    """All scalar metrics of one set of predictions, for a batch of image weightings."""

    def __init__(self, y_true: np.ndarray, probs: np.ndarray, classes: list[str], hard=False):
        self.classes = classes
        self.k = k = len(classes)
        self.n = n = len(y_true)
        self.y_pred = probs.argmax(axis=1)
        # One-hot of the (true, predicted) cell: weights @ cells = confusion counts.
        self.cells = np.zeros((n, k * k))
        self.cells[np.arange(n), y_true * k + self.y_pred] = 1.0
        self.normal = normal_index(classes)
        # Hard labels (a human reader) have no ranking: AUCs are not defined.
        self.hard = hard
        self.aucs = [] if hard else [_AucSorter(y_true == j, probs[:, j]) for j in range(k)]
        self.binary_auc = None
        if not hard and self.normal is not None:
            self.binary_auc = _AucSorter(y_true != self.normal, 1.0 - probs[:, self.normal])

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """weights [B, N] -> {metric name: values [B]} (NaN where undefined)."""
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        b, k = w.shape[0], self.k
        conf = (w @ self.cells).reshape(b, k, k)
        total = conf.sum(axis=(1, 2))
        tp = np.diagonal(conf, axis1=1, axis2=2)
        true_n = conf.sum(axis=2)
        pred_n = conf.sum(axis=1)
        correct = tp.sum(axis=1)
        recall = _div(tp, true_n)
        precision = _div(tp, pred_n)
        f1 = _div(2 * tp, true_n + pred_n)  # 2TP / (2TP + FP + FN)
        # Gorodkin's R_K and Cohen's kappa share the chance term sum_k p_k t_k; both are
        # written over integer-valued counts so exact degeneracy shows as an exact zero.
        chance = (pred_n * true_n).sum(axis=1)
        mcc_den = np.sqrt(
            (total**2 - (pred_n**2).sum(axis=1)) * (total**2 - (true_n**2).sum(axis=1))
        )
        out = {
            "accuracy": _div(correct, total),
            "balanced_accuracy": _nanmean(recall, axis=1),
            "macro_f1": _nanmean(f1, axis=1),
            "mcc": _div(correct * total - chance, mcc_den),
            "kappa": _div(correct * total - chance, total**2 - chance),
        }
        nan = np.full(b, np.nan)
        class_auc = np.stack([f(w) for f in self.aucs], axis=1) if self.aucs else None
        # Macro AUC needs every class: a missing one makes the average undefined (NaN).
        out["macro_roc_auc"] = class_auc.mean(axis=1) if class_auc is not None else nan
        out["binary_roc_auc"] = self.binary_auc(w) if self.binary_auc is not None else nan
        if self.normal is not None:
            m = self.normal
            sick = np.ones(k, dtype=bool)
            sick[m] = False
            tp_bin = conf[:, sick][:, :, sick].sum(axis=(1, 2))
            out["sensitivity"] = _div(tp_bin, true_n[:, sick].sum(axis=1))
            out["specificity"] = _div(conf[:, m, m], true_n[:, m])
        else:
            out["sensitivity"] = out["specificity"] = nan
        for j, c in enumerate(self.classes):
            out[per_class_key("precision", c)] = precision[:, j]
            out[per_class_key("recall", c)] = recall[:, j]
            out[per_class_key("f1", c)] = f1[:, j]
            out[per_class_key("roc_auc", c)] = class_auc[:, j] if class_auc is not None else nan
        return out


@dataclass(frozen=True)
class RocCurve:
    """ROC points at every distinct threshold; thresholds[0] is +inf (the (0, 0) corner)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float

    def to_dict(self) -> dict:
        thr = [None if not math.isfinite(t) else float(t) for t in self.thresholds]
        return {
            "auc": self.auc,
            "fpr": [float(x) for x in self.fpr],
            "tpr": [float(x) for x in self.tpr],
            "thresholds": thr,
        }


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> RocCurve | None:
    """ROC curve of a score against a binary truth; None if either side has no example."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)  # end of each tie group
    tps = np.cumsum(positive[order])[last]
    fps = last + 1 - tps
    tpr = np.concatenate([[0.0], tps / n_pos])
    fpr = np.concatenate([[0.0], fps / n_neg])
    thr = np.concatenate([[np.inf], s[last]])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoid rule
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thr, auc=area)


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Mann-Whitney ROC-AUC (ties count one half); None without positives or negatives."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    value = _AucSorter(positive, scores)(np.ones((1, len(positive))))[0]
    return None if np.isnan(value) else float(value)


def to_optional(x) -> float | None:
    """NaN -> None, numpy scalar -> float: JSON-ready."""
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class Metrics:
    """Point estimates for one set of predictions."""

    classes: list[str]
    values: dict[str, float | None]  # every name from metric_names(classes)
    confusion: np.ndarray  # int64 [K, K], rows true, columns predicted
    support: list[int]  # images per true class
    roc: dict[str, RocCurve | None] = field(default_factory=dict)  # per class + "binary"
    notes: list[str] = field(default_factory=list)

    def per_class(self, cls: str) -> dict[str, float | None]:
        return {m: self.values[per_class_key(m, cls)] for m in PER_CLASS}


def compute_metrics(y_true, probs, classes: Sequence[str], *, hard: bool = False) -> Metrics:
    """Point estimates of every metric. ``hard``: probs are one-hot labels (no AUCs)."""
    y, p, classes = check_inputs(y_true, probs, classes)
    scorer = WeightedScorer(y, p, classes, hard=hard)
    values = {k: to_optional(v[0]) for k, v in scorer(np.ones((1, len(y)))).items()}
    conf = confusion_matrix(y, scorer.y_pred, len(classes))
    roc: dict[str, RocCurve | None] = {}
    if not hard:
        for j, c in enumerate(classes):
            roc[c] = roc_curve(y == j, p[:, j])
        m = scorer.normal
        if m is not None:
            roc[BINARY_CURVE] = roc_curve(y != m, 1.0 - p[:, m])
    return Metrics(
        classes=classes,
        values=values,
        confusion=conf,
        support=[int(x) for x in conf.sum(axis=1)],
        roc=roc,
        notes=explain_undefined(conf, classes, hard=hard),
    )


def explain_undefined(conf: np.ndarray, classes: list[str], hard: bool = False) -> list[str]:
    """One note per undefined (or quietly narrowed) metric, in plain words."""
    notes = []
    true_n = conf.sum(axis=1)
    pred_n = conf.sum(axis=0)
    absent = [c for c, t in zip(classes, true_n, strict=True) if t == 0]
    never = [c for c, t in zip(classes, pred_n, strict=True) if t == 0]
    if hard:
        notes.append("ROC-AUC is not defined for hard labels (no scores to rank)")
    if absent:
        names = ", ".join(absent)
        notes.append(
            f"no image of class {names}: recall{'' if hard else ' and ROC-AUC'} undefined "
            "for it; balanced accuracy averages the classes present"
            + ("" if hard else "; macro ROC-AUC undefined")
        )
    if never:
        notes.append(f"no image was predicted {', '.join(never)}: precision undefined for it")
    m = normal_index(classes)
    if m is None:
        notes.append(
            "no class named 'normal': the binary task (normal vs the rest), its ROC-AUC, "
            "sensitivity and specificity are undefined"
        )
    else:
        if true_n[m] == 0:
            notes.append("no normal image: specificity and binary ROC-AUC undefined")
        if true_n.sum() - true_n[m] == 0:
            notes.append("no abnormal image: sensitivity and binary ROC-AUC undefined")
    if (true_n > 0).sum() < 2 or (pred_n > 0).sum() < 2:
        notes.append("MCC undefined: all true labels or all predictions fall in a single class")
    total = conf.sum()
    if total**2 == (true_n * pred_n).sum():
        notes.append("Cohen's kappa undefined: the labels and predictions are one same class")
    return notes
