"""evaluate and predict: how good is a global model, and what does it say about new images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedxray.cli.common import ForceOpt, JsonOpt, KeyOpt, PlanOpt, QuietOpt, Ui

EXAMPLES = {
    "evaluate": [
        (
            "Evaluate a model on this site's held-out test shard",
            "fedxray evaluate round-0006.model test.shard --plan pneumo.plan",
        ),
        (
            "Compare with a radiologist's reads (file names need the site key) and draw plots",
            "fedxray evaluate round-0006.model test.shard --reference reads.csv "
            "--key hospital-a.key --plots eval-plots",
        ),
        (
            "Machine-readable, with 2000 resamples",
            "fedxray evaluate round-0006.model test.shard --bootstrap 2000 --json "
            "| jq .metrics.balanced_accuracy",
        ),
    ],
    "predict": [
        (
            "Classify a folder of new radiographs into a CSV file",
            "fedxray predict round-0006.model incoming/ -o predictions.csv",
        ),
        (
            "One JSON object per image, for a script",
            "fedxray predict round-0006.model scan1.dcm scan2.png --json",
        ),
    ],
}

BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch-size", min=1, metavar="N", help="Images per forward pass (memory vs speed)."
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", metavar="DEVICE", help="Where the model runs: cpu, cuda or cuda:N."),
]
# Show a progress bar only when there is enough work to watch.
_PROGRESS_FROM = 20
_STAGES = {"predict": "running the model", "bootstrap": "bootstrap"}


def evaluate_cmd(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="The global model (.model) to evaluate.")
    ],
    shard: Annotated[
        Path,
        typer.Argument(metavar="TEST.shard", help="Held-out test images made by `fedxray prep`."),
    ],
    plan: PlanOpt = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            metavar="READS.csv",
            help="A human reader's labels for the same images (columns: image_id or file, "
            "label); shown side by side with the model, with McNemar's test.",
            show_default=False,
        ),
    ] = None,
    key: KeyOpt = None,
    n_boot: Annotated[
        int,
        typer.Option(
            "--bootstrap",
            min=0,
            metavar="N",
            help="Bootstrap resamples for the 95% intervals (0: no intervals).",
        ),
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the bootstrap.")] = 0,
    plots: Annotated[
        Path | None,
        typer.Option(
            "--plots",
            metavar="DIR",
            help="Also write ROC curves and the confusion matrix as PNG files into DIR "
            "(needs matplotlib: pip install 'fedxray[plots]').",
            show_default=False,
        ),
    ] = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure a global model on a test shard, with 95% bootstrap confidence intervals.

    The model is first verified against its plan (--plan, $FEDXRAY_PLAN, or the *.plan next to
    the model that names its federation). Reports accuracy, balanced accuracy, per-class
    precision, recall and F1, macro one-vs-rest ROC-AUC, ROC-AUC of normal against any other
    class with sensitivity and specificity, Matthews correlation, Cohen's kappa and the
    confusion matrix. The bootstrap resamples patients (all images of a patient together)
    when the shard knows them, images otherwise; the same --seed gives the same intervals.

    With --reference, a reader's labels are compared with the model on the images they read.
    Rows naming a file (its path relative to the folder prep read) are matched through the
    site key prep used (--key); rows naming an image_id need no key.
    """
    from fedxray.data.shard_io import read_shard
    from fedxray.evaluation.report import PLOT_FILES, PlotsUnavailable, plot_report
    from fedxray.evaluation.run import evaluate_shard, load_model, reads_for_shard
    from fedxray.fsio import check_writable
    from fedxray.keys import load_private_key

    ui = Ui(quiet, json_out)
    if plots is not None and plots.is_dir():
        for name in PLOT_FILES.values():  # fail before the work, not after it
            check_writable(plots / name, force=force)
    loaded = load_model(model, plan)
    test = read_shard(shard)
    reads = None
    if reference is not None:
        identity = load_private_key(key) if key is not None else None
        reads = reads_for_shard(reference, test, loaded.classes, identity, name=reference.name)
    with _StageBar(ui) as bar:
        report = evaluate_shard(
            loaded,
            test,
            reads=reads,
            n_boot=n_boot,
            seed=seed,
            batch_size=batch_size,
            device=device,
            name=shard.name,
            progress=bar,
        )
    written: list[Path] | None = None
    if plots is not None:
        try:
            written = plot_report(report, plots, force=force)
        except PlotsUnavailable as e:
            ui.info(escape(f"no plots: {e.message}; to get them: {e.hint}"))
    if json_out:
        doc = {
            "model": loaded.describe(),
            "shard": {"file": str(shard), "images": len(test)},
            "reference": None if reference is None else str(reference),
            **report.to_dict(),
            "plots": None if written is None else [str(p) for p in written],
        }
        ui.emit_json(doc)
    _render(ui, report, loaded, shard)
    if written:
        names = ", ".join(p.name for p in written)
        ui.info(escape(f"wrote {len(written)} plot(s) to {plots}: {names}"))


# ---- rendering --------------------------------------------------------------------------


class _StageBar:
    """A progress bar per stage (predict, bootstrap) on stderr."""

    def __init__(self, ui: Ui):
        self.progress = _bar(ui)
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


def _bar(ui: Ui, enough_work: bool = True):
    bar = ui.progress()
    # Off the terminal (pipes, logs, CI) a bar is noise: only a blank line would remain.
    bar.disable = bar.disable or not enough_work or not ui.console.is_terminal
    return bar


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


def _render(ui: Ui, report, loaded, shard_path: Path) -> None:
    render_report(
        ui,
        report.to_dict(),
        f"{Path(loaded.path).name} (round {loaded.round} of {loaded.plan.name}) on "
        f"{shard_path.name}",
    )


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


# ---- predict ----------------------------------------------------------------------------


def predict(
    model: Annotated[
        Path, typer.Argument(metavar="MODEL", help="The global model (.model) to run.")
    ],
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE_OR_DIR",
            help="DICOM, PNG or JPEG files, or folders (searched recursively, hidden files "
            "skipped).",
        ),
    ],
    plan: PlanOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the rows to FILE (atomically, mode 0600) instead of standard output.",
            show_default=False,
        ),
    ] = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "cpu",
    force: ForceOpt = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Write JSON lines (one object per image) instead of CSV. Unlike --json "
            "elsewhere, this is one document per line, so the rows can stream.",
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify radiographs with a global model: one row per image, CSV by default.

    Each file goes through exactly the pixel pipeline `fedxray prep` uses, so an image gets
    the probabilities here that it gets inside a shard. The model is first verified against
    its plan (--plan, $FEDXRAY_PLAN, or the *.plan next to the model that names its
    federation).

    CSV columns: path, predicted, p_CLASS for each class, error. A file that cannot be used
    (not an image, damaged, not a radiograph) is reported on standard error and gets a row
    with only its path and the reason code in error; the exit status is 0 as long as at least
    one image was classified. Nothing from DICOM headers is written to the output.
    """
    from fedxray.errors import FedxrayError
    from fedxray.evaluation.run import format_predictions, load_model, predict_files, scan_inputs
    from fedxray.fsio import check_writable, write_atomic

    ui = Ui(quiet)
    to_stdout = output is None or str(output) == "-"
    if not to_stdout:
        check_writable(output, force=force)
    loaded = load_model(model, plan)
    paths = scan_inputs(inputs)
    counts = {"ok": 0, "skipped": 0}
    first_skip: list[str] = []
    held: list[str] = []  # output is held back until one image succeeded (see below)

    def watch(preds):
        for pred in preds:
            if pred.ok:
                counts["ok"] += 1
            else:
                counts["skipped"] += 1
                first_skip[:] = first_skip or [f"{pred.path}: {pred.message}"]
                if len(paths) > 1:  # a single file's reason is the error message itself
                    bar.console.print(
                        escape(f"skipped {pred.path}: {pred.message} ({pred.reason})")
                    )
            yield pred

    bar = _bar(ui, enough_work=len(paths) >= _PROGRESS_FROM)
    with bar:
        task = bar.add_task("classifying", total=len(paths))
        preds = predict_files(
            loaded,
            paths,
            batch_size=batch_size,
            device=device,
            progress=lambda done, total: bar.update(task, completed=done),
        )
        for chunk in format_predictions(watch(preds), loaded.classes, json_out, header=True):
            held.append(chunk)
            # Stream once an image succeeded; if none does, nothing at all goes out.
            if to_stdout and counts["ok"]:
                sys.stdout.write("".join(held))
                sys.stdout.flush()
                held.clear()
    if not counts["ok"]:
        if len(paths) == 1:
            raise FedxrayError(first_skip[0])
        raise FedxrayError(
            f"none of the {len(paths)} files is a usable radiograph", hint=f"e.g. {first_skip[0]}"
        )
    if to_stdout:
        sys.stdout.write("".join(held))
        sys.stdout.flush()
    else:
        write_atomic(output, "".join(held).encode("utf-8"), force=force, mode=0o600)
    skipped = f", skipped {counts['skipped']} file(s)" if counts["skipped"] else ""
    where = "" if to_stdout else f" into {output}"
    ui.info(escape(f"classified {counts['ok']} image(s){skipped}{where}"))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
    app.command("predict")(predict)
