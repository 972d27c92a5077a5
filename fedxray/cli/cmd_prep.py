"""prep: a site's folders of radiographs -> one de-identified shard file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedxray.cli.common import KeyOpt, PlanOpt, Run, Ui, command, output_option
from fedxray.errors import FedxrayError
from fedxray.keys import load_private_key
from fedxray.plan import load_plan
from fedxray.settings import DEFAULT_CLASSES
from fedxray.settings_options import option_default

EXAMPLES = {
    "prep": [
        (
            "Prepare hospital-a's images for the federation (labels.csv or folder names)",
            "fedxray prep /data/xray/train --plan pneumo.plan --key hospital-a.key",
        ),
        (
            "A held-out test shard, labels from a CSV file",
            "fedxray prep /data/xray/test --plan pneumo.plan --key hospital-a.key "
            "--labels test-labels.csv -o test.shard",
        ),
        (
            "Hold out 20% of the patients (hospital-a.holdout.shard) as non-members for "
            "`fedxray audit`",
            "fedxray prep /data/xray/train --plan pneumo.plan --key hospital-a.key --holdout 0.2",
        ),
        (
            "Before a federation exists: 64 px, two classes, the report as JSON",
            "fedxray prep sample_data/hospital-a -o a.shard --size 64 "
            "--classes normal,pneumonia --json",
        ),
    ],
}

# More skipped files than this are counted on screen, not listed (--json lists them all).
_SKIPPED_ON_SCREEN = 20
_LABEL_MODES = ("auto", "folders", "kermany")
_SOURCE_NAMES = {"auto": "folder names", "folders": "folder names", "kermany": "Kermany file names"}


@command(force=True)
def prep(
    run: Run,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT",
            help="Folders (searched recursively, hidden files skipped) or single DICOM, PNG "
            "or JPEG files.",
        ),
    ],
    output: output_option(
        "The shard to write. Default with --key: NAME.shard in the current folder, NAME being "
        "the key's site name; required without --key.",
        "SITE.shard",
    ) = None,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            "--image-size",
            metavar="N",
            help="Image size in pixels, without a plan (the plan's size otherwise).",
            show_default=False,
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes",
            metavar="A,B,...",
            help="Comma-separated class names, without a plan. Default: "
            f"{option_default('classes')}.",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        str,
        typer.Option(
            "--labels",
            metavar="SOURCE",
            help="Where labels come from: auto (labels.csv at the top of each input, else "
            "folder names), folders, kermany (Kermany file names), or a CSV file (columns "
            "file,label[,patient]).",
        ),
    ] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            metavar="N",
            help="Decoding processes. Default: one per CPU.",
            show_default=False,
        ),
    ] = None,
    keep_duplicates: Annotated[
        bool,
        typer.Option(
            "--keep-duplicates",
            help="Keep exact duplicates instead of keeping the first copy only: for a "
            "published test set, which must keep its size. Not for training shards.",
        ),
    ] = False,
    holdout: Annotated[
        float | None,
        typer.Option(
            "--holdout",
            metavar="FRACTION",
            help="Hold out this fraction of the patients (0 to 1, stratified by class): "
            "their images go to a second shard, never into the training shard; for "
            "`fedxray audit --non-members`.",
            show_default=False,
        ),
    ] = None,
    holdout_output: Annotated[
        Path | None,
        typer.Option(
            "--holdout-output",
            metavar="FILE",
            help="Where the held-out patients go. Default: SITE.holdout.shard beside the shard.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Prepare a site's radiographs: decode, label, de-identify, write one shard file.

    Every DICOM (CR or DX), PNG and JPEG under the inputs goes through the pixel pipeline that
    `fedxray predict` also uses: to greyscale, air dark, robust contrast window, resized to the
    plan's image size (padded, never cropped). Labels come from labels.csv at the top of an
    input, folder names (NORMAL/, bacterial/, viral/, ...), Kermany file names, or --labels
    FILE.CSV (paths in it: absolute, or relative to the CSV's folder or to the input).
    Exact duplicates are kept once (all copies with --keep-duplicates).

    The shard holds only the small images, the labels and keyed pseudonyms: no header value
    (names, IDs, dates, UIDs, institution) and no file name. With --key, pseudonyms are derived
    from the site key, so they are the same in every run (and a reader's CSV of file names can
    be matched by `fedxray evaluate --key`); without it they are random per shard. Burned-in
    text in the pixels is NOT removed.

    Files that cannot be used are skipped, each with a reason (unreadable, not-an-image,
    undecodable, wrong-modality, multi-frame, colour-dicom, implausible, unknown-label,
    duplicate), and the run goes on. Implausible: too small (shorter side under 64 px),
    blank, random noise, a smooth gradient or a colour picture. An input without a single
    usable image is an error, and then nothing is written. The shard is written only when
    everything succeeded (mode 0600; it never leaves the site).

    With --holdout, a fraction of the patients (all their images) is split off into a
    second shard, written with the first or not at all: patients the model will never see,
    against whom `fedxray audit` measures what it leaks. With --key the same images give
    the same split in every run.
    """
    from fedxray.steps.prep import prep_files

    wanted = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    the_plan = load_plan(plan) if plan is not None else None
    if the_plan is not None:
        image_size = the_plan.settings.model.image_size
        class_names = list(the_plan.settings.classes)
        _agree_with_plan(image_size, class_names, size, wanted, the_plan.name)
    elif size is None:
        raise FedxrayError(
            "no image size: give --plan PLAN (or set FEDXRAY_PLAN)",
            hint="before a federation exists, use --size N (and --classes A,B,...)",
        )
    else:
        image_size, class_names = size, wanted or list(DEFAULT_CLASSES)
    identity = load_private_key(key) if key is not None else None
    if output is None:
        if identity is None:
            raise FedxrayError(
                "no output file given", hint="pass -o SITE.shard (or --key SITE.key)"
            )
        output = Path(f"{identity.name}.shard")
    with run.ui.progress(unit="images") as bar:
        task = bar.add_task("preparing", total=None)
        res = prep_files(
            inputs,
            output,
            image_size=image_size,
            classes=class_names,
            identity=identity,
            plan=the_plan,
            label_mode=_label_mode(labels),
            workers=workers,
            keep_duplicates=keep_duplicates,
            holdout=holdout,
            holdout_output=holdout_output,
            force=run.force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    run.done(res.to_dict(), lambda: _render(run.ui, res.report, res.output, res.holdout))


def _agree_with_plan(
    image_size: int, classes: list[str], size: int | None, wanted: list[str] | None, name: str
) -> None:
    """--size / --classes beside a plan may only repeat what the plan says."""
    if size is not None and size != image_size:
        raise FedxrayError(
            f"--size {size} differs from the image size of plan {name} ({image_size})",
            hint="leave out --size: the plan sets it",
        )
    if wanted is not None and wanted != classes:
        raise FedxrayError(
            f"--classes {','.join(wanted)} differs from the classes of plan {name} "
            f"({','.join(classes)})",
            hint="leave out --classes: the plan sets them",
        )


def _label_mode(labels: str) -> str | Path:
    if labels in _LABEL_MODES:
        return labels
    path = Path(labels)
    if not path.is_file():
        raise FedxrayError(
            f"labels file not found: {labels}",
            hint="--labels takes auto, folders, kermany or the path of a CSV file",
        )
    return path


def _render(ui: Ui, report, output: Path, holdout=None) -> None:
    rows: list[tuple] = [("files seen", report.files_seen)]
    for source in dict.fromkeys(report.label_sources.values()):
        rows.append(("labels from", _SOURCE_NAMES.get(source, source)))
    for c in report.classes:
        rows.append((f"kept: {c}", f"{report.kept[c]} images, {report.patients[c]} patients"))
    for reason, n in report.skipped_counts().items():
        rows.append((f"skipped: {reason}", n))
    ui.table(
        escape(
            f"{report.total_kept} images at {report.image_size} px"
            + ("" if holdout is not None else f" into {output}")
        ),
        [(escape(str(a)), escape(str(b))) for a, b in rows],
    )
    if report.skipped:
        # One line per file rather than a table: long paths wrap instead of being cut.
        shown = report.skipped[:_SKIPPED_ON_SCREEN]
        more = len(report.skipped) - len(shown)
        ui.info("skipped files" + (f" (the first {len(shown)}; all in --json):" if more else ":"))
        for s in shown:
            ui.info(escape(f"  {s.path}: {s.reason}: {s.message}"))
        if more:
            ui.info(f"  ... and {more} more")
    for w in report.warnings:
        ui.info(escape(f"warning: {w}"))
    if report.pseudonyms == "random":
        ui.info(
            "note: no --key: pseudonyms are random, so they match no other shard and reader "
            "CSVs cannot name files"
        )
    if holdout is not None:
        for what, part in (("training", holdout.training), ("held out", holdout.held_out)):
            ui.info(
                escape(f"{what}: {part.images} images of {part.patients} patients in {part.file}")
            )
        written = f"{output} and {holdout.held_out.file} ({report.seconds:.1f} s; they stay"
    else:
        written = f"{output} ({report.seconds:.1f} s; it stays"
    ui.info(escape(f"wrote {written} at this site)"))


def register(app: typer.Typer) -> None:
    app.command("prep")(prep)
