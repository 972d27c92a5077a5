"""The command skeleton: shared options, the party a command acts as, and where output goes.

Every command parses its options, calls one library step and renders the step's result:

* ``-o/--output``: ``-`` means standard output; outputs are written atomically and never
  over an existing file without ``--force``.
* ``--json``: standard output carries exactly one JSON document and nothing else; the
  human-readable report still goes to standard error (``-q`` silences it), as do warnings
  and progress bars (these only on a terminal). ``predict --json`` writes one document per
  line instead, so its rows can stream.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from fedxray.devices import check_device_name, resolve_device
from fedxray.distributed import is_follower, launch
from fedxray.errors import EXIT_BROKEN_PIPE, FedxrayError
from fedxray.fsio import is_stdio
from fedxray.settings_options import PER_MODEL, option_default
from fedxray.steps import party_files
from fedxray.steps.shared import Party, load_party

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (nothing else there).")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing on stderr but errors.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
PlanOpt = Annotated[
    Path | None,
    typer.Option(
        "--plan",
        envvar="FEDXRAY_PLAN",
        help="The federation plan (.plan). Default: $FEDXRAY_PLAN.",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="FEDXRAY_KEY",
        help="This party's private key (.key). Default: $FEDXRAY_KEY.",
        show_default=False,
    ),
]


def _device(value: str) -> str:
    """--device, checked while the command line is read: before any work starts."""
    name = check_device_name(value)
    if name != "cpu":  # the CPU is always there; only other devices need torch to check
        resolve_device(name)
    return name


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", metavar="DEVICE", callback=_device,
        help="Where the model runs: cpu, cuda, cuda:N (an NVIDIA GPU) or mps (Apple).",
    ),
]  # fmt: skip


def argument(metavar: str, help: str, kind: Any = Path) -> Any:
    """A command's positional argument."""
    return Annotated[kind, typer.Argument(metavar=metavar, help=help)]


def output_option(help: str, metavar: str | None = None) -> Any:
    """The ``-o/--output`` option of a command whose output has a default name."""
    return Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar=metavar, help=help, show_default=False),
    ]


class Ui:
    """Where a command's human output goes: stderr, honouring --quiet and NO_COLOR."""

    def __init__(self, quiet: bool = False, json_mode: bool = False):
        self.json_mode = json_mode
        self.console = Console(
            stderr=True,
            quiet=quiet,
            no_color=bool(os.environ.get("NO_COLOR")),
            highlight=False,
            soft_wrap=True,
        )

    def info(self, text: str) -> None:
        self.console.print(text)

    def table(self, title: str | None, rows: list[tuple], headers: tuple[str, ...] = ()) -> None:
        t = Table(title=title, show_header=bool(headers), title_justify="left")
        for h in headers or ("", ""):
            t.add_column(h)
        for r in rows:
            t.add_row(*(str(c) for c in r))
        self.console.print(t)

    def kv(self, title: str | None, mapping: dict) -> None:
        self.table(title, [(k, v) for k, v in mapping.items()])

    def emit_json(self, doc) -> None:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
        sys.stdout.flush()

    def done(self, doc: dict, render: Callable[[], None]) -> None:
        """The end of every command: the JSON document (with --json), then the report."""
        if self.json_mode:
            self.emit_json(doc)
        render()

    def progress(self, enough_work: bool = True, unit: str = ""):
        """A rich progress bar on stderr, counting ``unit``s, with the time spent and the time
        left; off when quiet, off the terminal (pipes, logs, CI: only a blank line would
        remain) or for too little work to watch."""
        return Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            _Count(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=self.console.quiet or not self.console.is_terminal or not enough_work,
        )


class _Count(ProgressColumn):
    """'3/40 steps'; before the total is known, nothing (never a long '0/?'). A task may
    count another unit than the bar's (``bar.update(task, unit="images")``)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        if task.total is None:
            return Text("")
        unit = task.fields.get("unit", self.unit)
        return Text(
            f"{int(task.completed)}/{int(task.total)}{' ' + unit if unit else ''}",
            style="progress.download",
        )


def start(quiet: bool, json_out: bool, *outputs: Path | str | None) -> Ui:
    """The preamble of a command: its Ui, and --json not fighting a file for stdout. Ranks
    other than 0 of a torchrun job say nothing: rank 0 reports for all."""
    if json_out and any(is_stdio(o) for o in outputs):
        raise FedxrayError(
            "--json and -o - both want standard output", hint="write the file with -o FILE"
        )
    if is_follower():
        return Ui(True, False)
    return Ui(quiet, json_out)


# The command line being run (set by fedxray.cli.main), for --nproc to start it again.
COMMAND_LINE: list[str] = []


def nproc_option(what: str) -> Any:
    return Annotated[
        int,
        typer.Option(
            "--nproc", min=1, metavar="N",
            help=f"{what} in N processes (torch.distributed: gloo on the CPU, NCCL on GPUs, "
            "one GPU each); the same as torchrun --nproc-per-node N -m fedxray ...",
        ),
    ]  # fmt: skip


def relaunch(nproc: int) -> None:
    """Run this command line again in ``nproc`` processes (torch.distributed's launcher) and
    exit with its exit code; returns when one process is asked for."""
    if nproc <= 1:
        return
    if not COMMAND_LINE:
        raise FedxrayError("--nproc needs the fedxray command line (fedxray.cli.main)")
    argv, skip = [], False
    for arg in COMMAND_LINE:
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        argv.append(arg)
    raise SystemExit(launch(argv, nproc))


# The plan settings that commands take as options (fedxray.settings.OPTIONS), with their help.
PLAN_OPTIONS = {
    "model": "Model: scatter-linear, smallcnn, tinycnn, resnet18, resnet18-frozen or "
    "densenet121-frozen (a linear head on a frozen pretrained network: give its weights with "
    "--init), or a plug-in's.",
    "image_size": "Input size in pixels.",
    "geometry": "How prep fits a non-square image into the square: pad (aspect kept, black "
    "borders) or stretch (resized to the square, so square exports and originals agree).",
    "classes": "Comma-separated class names.",
    "rounds": "Number of federated rounds.",
    "local_epochs": "Epochs per round.",
    "batch_size": "Expected batch size.",
    "lr": "Local learning rate.",
    "epsilon": "Privacy budget per site.",
    "delta": "Privacy delta.",
    "full_batch": "Every patient in every step (q = 1) instead of Poisson batches.",
    "bias_lr": "Learning rate of the biases (0: --lr).",
    "centering": "Round 1 releases the DP mean feature (scatter-linear, *-frozen).",
    "clip_norm": "DP-SGD per-example clipping norm.",
    "allow_no_dp": "Accept non-private (--no-dp) updates.",
    "privacy_unit": "What DP protects: auto (the patient when known), patient or image.",
    "class_weights": "Per-class loss weights, e.g. 1,2,2 (none: all alike; balanced: no DP).",
    "augment": "Random jitter of the training images.",
    "ema": "Sites send the moving average of their iterates, this decay per step (0: off).",
    "min_sites": "Fewest sites per round.",
    "strict": "Double masking: a second small trip each round.",
    "server_opt": "fedavg, momentum or fedadam.",
    "server_lr": "Server learning rate.",
    "average_last": "Publish the mean of the last K global models (1: off).",
}

PLAN_HINT = "pass --plan FILE or set FEDXRAY_PLAN"


def require(value, what: str, hint: str):
    if value is None:
        raise FedxrayError(f"no {what} given", hint=hint)
    return value


def party(plan: Path | None, key: Path | None, *, coordinator: bool) -> Party:
    """The party a command acts as, from --plan and --key."""
    who = "coordinator.key" if coordinator else "SITE.key"
    return load_party(
        require(plan, "plan", PLAN_HINT),
        require(key, "key", f"pass --key {who} or set FEDXRAY_KEY"),
        coordinator=coordinator,
    )


def flag(error: FedxrayError) -> str | None:
    """The command-line option an error names (``force`` -> ``--force``), with its value."""
    if error.option is None:
        return None
    text = "--" + error.option.replace("_", "-")
    return text if error.value is None else f"{text} {error.value}"


def hint(error: FedxrayError) -> str | None:
    """An error's hint, naming the flag that changes the outcome."""
    option = flag(error)
    if option is None:
        return error.hint
    return f"{error.hint} ({option})" if error.hint else f"see {option}"


@dataclass(frozen=True)
class Run:
    """What a command's body receives: its Ui, the party it acts as (if any, with the plan and
    key files it was given), and --force."""

    ui: Ui
    party: Party | None = None
    force: bool = False
    plan_path: Path | None = None

    def done(self, doc: dict, render: Callable[[], None]) -> None:
        self.ui.done(doc, render)

    def next_command(self, *words: str | Path, key: Path | None = None) -> str:
        """A complete command for this party (or for the one whose ``key`` is named), with
        --plan and --key, to print as a ``next:`` hint: it runs as printed, whatever the
        environment holds."""
        me = self.party.key_path if self.party is not None and key is None else key
        return party_files.command_text(party_files.command(*words, plan=self.plan_path, key=me))


def _is_float(annotation: Any) -> bool:
    """Whether an option's annotation (Annotated[float | None, ...]) takes a float."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation is float or float in typing.get_args(annotation)


def check_finite(options: dict[str, Any]) -> None:
    """Every float option must be a number: `nan` and `inf` parse as floats, yet no setting
    of fedxray means anything with them."""
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            flag = "--" + name.replace("_", "-")
            raise FedxrayError(f"{flag} must be a finite number, got {value}")


def _quiet_on_broken_pipe() -> None:
    """The reader of standard output went away (``| head``): stop quietly, as cat and git
    do (the shell reports 141, killed by SIGPIPE), and let nothing flush into the closed
    pipe at exit."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(EXIT_BROKEN_PIPE)


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


def _plan_option(name: str, help: str, default: Any) -> inspect.Parameter:
    """The option of a plan setting: flag from its name, type from its default. An option
    whose default depends on the model (PER_MODEL) stays unset unless given."""
    flag = "--" + name.replace("_", "-")
    if name in PER_MODEL:
        recipe = option_default(name)
        help = f"{help} Default: per model ({recipe} for {option_default('model')})."
        kind, default = type(recipe) | None, None
        if isinstance(recipe, bool):
            flag = f"{flag}/--no-{flag[2:]}"
    else:
        kind = str | None if default is None else type(default)  # None: a text option, unset
        if default is True:  # on by default: the option turns it off
            flag = f"{flag}/--no-{flag[2:]}"
    option = typer.Option(flag, help=help, show_default=default is not None)
    return _option(name, Annotated[kind, option], default)


def command(
    *,
    acts_as: str | None = None,
    force: bool = False,
    outputs: tuple[str, ...] = (),
    json_help: str | None = None,
    plan_options: dict[str, str] | None = None,
    plan_defaults: dict[str, Any] | None = None,
):
    """Decorator: the options commands share and their preamble, so that a command's body is
    only its own logic.

    After the command's own options it adds --plan and --key when the command ``acts_as`` a
    "site" or the "coordinator" (the party, checked against the plan, is handed over), --force
    (with ``force`` or a party), --json and -q. ``plan_options`` (option -> help) become the
    options of plan settings, flag, type and default from fedxray.settings (or
    ``plan_defaults``), in place of the command's parameter ``plan_options``, which receives
    their values as one dict. The command's first parameter receives a Run; ``outputs`` name
    its parameters that may be ``-`` (standard output), which --json must not share.
    """

    def wrap(fn: Callable[..., int | None]) -> Callable[..., int | None]:
        sig = inspect.signature(fn, eval_str=True)
        params = []
        for p in list(sig.parameters.values())[1:]:  # the first receives the Run
            if p.name != "plan_options":
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            for name, help in (plan_options or {}).items():
                default = (plan_defaults or {}).get(name, option_default(name))
                params.append(_plan_option(name, help, default))
        if acts_as is not None:
            params += [_option("plan", PlanOpt, None), _option("key", KeyOpt, None)]
        if force or acts_as is not None:
            params.append(_option("force", ForceOpt, False))
        json_opt = JsonOpt
        if json_help is not None:
            json_opt = Annotated[bool, typer.Option("--json", help=json_help)]
        params += [_option("json_out", json_opt, False), _option("quiet", QuietOpt, False)]

        floats = [p.name for p in params if _is_float(p.annotation)]

        @functools.wraps(fn)
        def run(**kwargs) -> int | None:
            check_finite({name: kwargs[name] for name in floats})
            ui = start(kwargs.pop("quiet"), kwargs.pop("json_out"), *map(kwargs.get, outputs))
            me = plan_path = None
            if acts_as is not None:
                plan_path = kwargs.pop("plan")
                me = party(plan_path, kwargs.pop("key"), coordinator=acts_as != "site")
            forced = kwargs.pop("force", False)
            if plan_options is not None:
                kwargs["plan_options"] = {name: kwargs.pop(name) for name in plan_options}
            try:
                # A command may return an exit status for an outcome that is not an error
                # (audit's alert: the report is complete, exit 7); None means 0.
                return fn(Run(ui, me, forced, plan_path), **kwargs)
            except BrokenPipeError:
                _quiet_on_broken_pipe()

        run.__signature__ = sig.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap
