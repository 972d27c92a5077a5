"""evaluate and predict: how good is a global model, and what does it say about new images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedxray.cli.common import (
    DeviceOpt,
    KeyOpt,
    PlanOpt,
    Run,
    Ui,
    argument,
    command,
    nproc_option,
    output_option,
    relaunch,
)
from fedxray.cli.render import StageBar, render_report
from fedxray.distributed import is_follower
from fedxray.errors import FedxrayError
from fedxray.evaluation.confidence import MIN_CONFIDENCE
from fedxray.fsio import check_writable, is_stdio, write_atomic
from fedxray.keys import load_private_key
from fedxray.steps.shared import DEFAULT_BATCH

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
NOT_A_DIAGNOSIS = (
    "note: these predictions are not a diagnosis; a qualified reader must review every image"
)
# Show a progress bar only when there is enough work to watch.
_PROGRESS_FROM = 20


@command(force=True)
def evaluate_cmd(
    run: Run,
    model: argument("MODEL", "The global model (.model) to evaluate."),
    shard: argument("TEST.shard", "Held-out test images made by `fedxray prep`."),
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
    batch_size: BatchOpt = DEFAULT_BATCH,
    device: DeviceOpt = "cpu",
    nproc: nproc_option("Run the model") = 1,
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
    from fedxray.steps.evaluate import evaluate_files

    relaunch(nproc)
    identity = load_private_key(key) if key is not None and reference is not None else None
    with StageBar(run.ui) as bar:
        res = evaluate_files(
            model,
            shard,
            plan_path=plan,
            reference=reference,
            identity=identity,
            n_boot=n_boot,
            seed=seed,
            plots=plots,
            batch_size=batch_size,
            device=device,
            force=run.force,
            progress=bar,
        )
    if res is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    run.done(res.to_dict(), lambda: _render_evaluation(run.ui, res))


def _render_evaluation(ui: Ui, res) -> None:
    if res.plots_note:
        ui.info(escape(res.plots_note))
    m = res.model
    title = f"{Path(m.path).name} (round {m.round} of {m.plan.name}) on {res.shard.name}"
    render_report(ui, res.report.to_dict(), title)
    if res.plots:
        names = ", ".join(p.name for p in res.plots)
        ui.info(escape(f"wrote {len(res.plots)} plot(s) to {res.plots[0].parent}: {names}"))


# ---- predict ----------------------------------------------------------------------------


@command(
    force=True,
    json_help="Write JSON lines (one object per image) instead of CSV. Unlike --json elsewhere, "
    "this is one document per line, so the rows can stream.",
)
def predict(
    run: Run,
    model: argument("MODEL", "The global model (.model) to run."),
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE_OR_DIR",
            help="DICOM, PNG or JPEG files, or folders (searched recursively, hidden files "
            "skipped).",
        ),
    ],
    plan: PlanOpt = None,
    output: output_option(
        "Write the rows to FILE (atomically, mode 0600) instead of standard output.", "FILE"
    ) = None,
    batch_size: BatchOpt = DEFAULT_BATCH,
    device: DeviceOpt = "cpu",
    nproc: nproc_option("Run the model") = 1,
    min_confidence: Annotated[
        float,
        typer.Option(
            "--min-confidence",
            metavar="C",
            help="Flag predictions whose confidence (0: a uniform guess, 1: certain) is below C.",
        ),
    ] = MIN_CONFIDENCE,
) -> None:
    """Classify radiographs with a global model: one row per image, CSV by default.

    Each file goes through exactly the pixel pipeline `fedxray prep` uses, so an image gets
    the probabilities here that it gets inside a shard. The model is first verified against
    its plan (--plan, $FEDXRAY_PLAN, or the *.plan next to the model that names its
    federation).

    The output is not a diagnosis: a research model's estimate, for a qualified reader to
    weigh (a one-line notice on standard error says so; -q silences it).

    CSV columns: path, predicted, p_CLASS for each class, confidence, ood, ood_reasons,
    error. ood is yes when the image looks out of distribution: it failed a plausibility
    check (ood_reasons: size, greyscale, blank, noise, smooth: not like a radiograph), or the
    model's confidence, its top probability rescaled from a uniform guess (0) to certainty
    (1), is below --min-confidence (low-confidence). A file that cannot be used at all (not
    an image, damaged) is reported on standard error and gets a row with only its path and
    the reason code in error; the exit status is 0 as long as at least one image was
    classified. Nothing from DICOM headers is written to the output.
    """
    from fedxray.steps.model import load_model
    from fedxray.steps.predict import format_predictions, predict_files, scan_inputs

    relaunch(nproc)
    to_stdout = output is None or is_stdio(output)
    if not to_stdout:
        check_writable(output, force=run.force)
    loaded = load_model(model, plan)
    paths = scan_inputs(inputs)
    counts = {"ok": 0, "skipped": 0, "ood": 0}
    first_skip: list[str] = []
    first_ood: list[str] = []
    held: list[str] = []  # output is held back until one image succeeded (see below)

    def watch(preds):
        for pred in preds:
            if pred.ok:
                counts["ok"] += 1
                if pred.ood:
                    counts["ood"] += 1
                    first_ood[:] = first_ood or [f"{pred.path}: {pred.ood_message}"]
            else:
                counts["skipped"] += 1
                first_skip[:] = first_skip or [f"{pred.path}: {pred.message}"]
                if len(paths) > 1:  # a single file's reason is the error message itself
                    bar.console.print(
                        escape(f"skipped {pred.path}: {pred.message} ({pred.reason})")
                    )
            yield pred

    if is_follower():  # a rank other than 0 under torchrun: its share, then rank 0 writes
        for _ in predict_files(loaded, paths, batch_size=batch_size, device=device):
            pass
        return
    with run.ui.progress(enough_work=len(paths) >= _PROGRESS_FROM, unit="images") as bar:
        task = bar.add_task("classifying", total=len(paths))
        preds = predict_files(
            loaded,
            paths,
            batch_size=batch_size,
            device=device,
            min_confidence=min_confidence,
            progress=lambda done, total: bar.update(task, completed=done),
        )
        rows = format_predictions(watch(preds), loaded.classes, run.ui.json_mode, header=True)
        for chunk in rows:
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
        write_atomic(output, "".join(held).encode("utf-8"), force=run.force, mode=0o600)
    skipped = f", skipped {counts['skipped']} file(s)" if counts["skipped"] else ""
    where = "" if to_stdout else f" into {output}"
    run.ui.info(NOT_A_DIAGNOSIS)
    run.ui.info(escape(f"classified {counts['ok']} image(s){skipped}{where}"))
    if counts["ood"]:
        run.ui.info(
            escape(
                f"warning: {counts['ood']} of {counts['ok']} image(s) look out of distribution "
                f"(column ood), e.g. {first_ood[0]}"
            )
        )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
    app.command("predict")(predict)
