"""Renderers that more than one command uses: progress per stage, the evaluation tables, the
audit's verdict."""

from __future__ import annotations

from rich.markup import escape

from fedxray.cli.common import Ui

# The first round of a model with a fixed front end computes the shard's features (minutes
# on a CPU, once per shard): train-local's and simulate's bars say so instead of looking stuck.
FEATURES_LABEL = "computing features"


def epoch_of(done: int, total: int, epochs: int) -> int:
    """Which of a round's ``epochs`` the step after ``done`` of ``total`` steps is in."""
    per_epoch = max(1, total // max(1, epochs))
    return min(epochs, done // per_epoch + 1)


_STAGES = {"predict": "running the model", "bootstrap": "bootstrap"}


class StageBar:
    """A progress bar per stage (predict, bootstrap) on stderr."""

    def __init__(self, ui: Ui):
        self.progress = ui.progress()
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(_STAGES.get(stage, stage), total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _with_ci(est: dict) -> str:
    text = _num(est["value"])
    if est["value"] is not None and "low" in est:
        if est["low"] is None:
            return text + "  (no interval)"
        text += f"  [{_num(est['low'])}, {_num(est['high'])}]"
    return text


def _metric_labels(doc: dict) -> dict[str, str]:
    binary = doc["binary_task"]
    neg = binary["negative"] if binary else "normal"
    return {
        "accuracy": "accuracy",
        "balanced_accuracy": "balanced accuracy",
        "macro_f1": "F1 (macro)",
        "macro_roc_auc": "ROC-AUC (macro, one vs rest)",
        "binary_roc_auc": f"ROC-AUC ({neg} vs any other)",
        "sensitivity": f"sensitivity (not {neg})",
        "specificity": f"specificity ({neg})",
        "mcc": "Matthews correlation",
        "kappa": "Cohen's kappa",
    }


def render_report(ui: Ui, doc: dict, title: str) -> None:
    """The evaluation tables on stderr, from a report's JSON document."""
    boot = doc["bootstrap"]
    unit = (
        f"{doc['n_images']} images of {doc['n_patients']} patients"
        if doc["n_patients"] is not None
        else f"{doc['n_images']} images"
    )
    ci = "" if boot is None else f"; 95% CI: {boot['resamples']} {boot['unit']} resamples"
    labels = _metric_labels(doc)
    ui.table(
        escape(f"{title}: {unit}{ci}"),
        [(labels[k], _with_ci(v)) for k, v in doc["metrics"].items()],
        ("metric", "value" if boot is None else "value  [95% CI]"),
    )
    # One row per class and metric: four intervals side by side do not fit a terminal.
    names = {"precision": "precision", "recall": "recall", "f1": "F1", "roc_auc": "ROC-AUC"}
    ui.table(
        "per class",
        [
            (f"{c} ({row['support']} images)" if i == 0 else "", name, _with_ci(row[m]))
            for c, row in doc["per_class"].items()
            for i, (m, name) in enumerate(names.items())
        ],
        ("class", "metric", "value" if boot is None else "value  [95% CI]"),
    )
    counts = doc["confusion_matrix"]["counts"]
    ui.table(
        "confusion matrix (rows: true class, columns: predicted)",
        [(c, *counts[i]) for i, c in enumerate(doc["classes"])],
        ("", *doc["classes"]),
    )
    if doc["reader"] is not None:
        _render_reader(ui, doc["reader"], labels)
    for note in doc["notes"]:
        ui.info(escape(f"note: {note}"))


def _render_reader(ui: Ui, reader: dict, labels: dict[str, str]) -> None:
    unread = f", {reader['n_unread']} not read" if reader["n_unread"] else ""
    # Intervals of the difference only (the question asked); all of them are in --json.
    ui.table(
        f"model and reader on the {reader['n_images']} images read{unread}",
        [
            (
                labels[k],
                _num(v["model"]["value"]),
                _num(v["reader"]["value"]),
                _with_ci(v["model_minus_reader"]),
            )
            for k, v in reader["metrics"].items()
        ],
        ("metric", "model", "reader", "model - reader  [95% CI]"),
    )
    m = reader["mcnemar"]
    ui.info(
        f"McNemar ({m['method']}): model right and reader wrong on {m['model_right_reader_wrong']}"
        f" images, the reverse on {m['model_wrong_reader_right']}; p = {m['p_value']:.4g}"
    )
    for note in reader["notes"]:
        ui.info(escape(f"note: {note}"))


def render_audit_alert(ui: Ui, doc: dict) -> None:
    """The line an audit shows when its lower bound exceeds the accountant's epsilon."""
    if doc["exceeds_accountant"]:
        ui.info(
            "ALERT: the lower bound exceeds the accountant's epsilon: the model leaks more "
            "than the privacy guarantee allows (a bug in training or accounting?)"
        )
