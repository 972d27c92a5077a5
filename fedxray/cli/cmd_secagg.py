"""mask, aggregate, reveal, unmask, abandon: a round of secure aggregation over files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import (
    PLAN_HINT,
    ForceOpt,
    JsonOpt,
    KeyOpt,
    PlanOpt,
    QuietOpt,
    Ui,
    check_stdout_use,
    require,
)

EXAMPLES = {
    "mask": [
        (
            "Mask hospital-a's round-3 update (writes hospital-a-round-0003.masked)",
            "fedxray mask hospital-a-round-0003.update --plan pneumo.plan --key hospital-a.key",
        ),
    ],
    "aggregate": [
        (
            "Sum the masked updates that arrived for round 3",
            "fedxray aggregate inbox/*-round-0003.masked --plan pneumo.plan --key coordinator.key",
        ),
        (
            "Pick round 3 explicitly and name the outputs",
            "fedxray aggregate inbox/*.masked --round 3 --plan pneumo.plan --key coordinator.key "
            "-o round-0003.sum --closure round-0003.closure",
        ),
    ],
    "reveal": [
        (
            "Answer the coordinator's closure of round 3",
            "fedxray reveal round-0003.closure --plan pneumo.plan --key hospital-a.key",
        ),
    ],
    "unmask": [
        (
            "Round 3 without dropouts (writes round-0004.model beside the sum)",
            "fedxray unmask round-0003.sum --plan pneumo.plan --key coordinator.key",
        ),
        (
            "Round 3 after a dropout, with the survivors' reveals",
            "fedxray unmask round-0003.sum inbox/*-round-0003.reveal --plan pneumo.plan "
            "--key coordinator.key -o round-0004.model",
        ),
    ],
    "abandon": [
        (
            "A survivor of round 3 never sent its reveal: start round 4 from the same weights",
            "fedxray abandon round-0003.model --reason 'hospital-b unreachable' "
            "--plan pneumo.plan --key coordinator.key",
        ),
    ],
}


def _key_dir(key_path: Path) -> Path:
    """The folder of a key file: where its owner keeps the protocol's state."""
    return key_path.parent if str(key_path.parent) else Path(".")


def _beside(anchor: Path | str, name: str, fallback: Path) -> Path:
    """``name`` in the folder of ``anchor`` (or in ``fallback`` when anchor is stdin/stdout)."""
    return (fallback if str(anchor) == "-" else Path(anchor).parent) / name


def _party(plan, key, coordinator: bool):
    """(plan, identity, key folder) for this party, checked against the plan."""
    from fedxray.keys import load_private_key
    from fedxray.plan import load_plan

    the_plan = load_plan(require(plan, "plan", PLAN_HINT))
    who = "coordinator.key" if coordinator else "SITE.key"
    key_path = require(key, "key", f"pass --key {who} or set FEDXRAY_KEY")
    ident = load_private_key(key_path)
    if coordinator:
        the_plan.require_coordinator(ident)
    else:
        the_plan.require_site(ident)
    return the_plan, ident, _key_dir(Path(key_path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return str(a) != "-" and str(b) != "-" and a.resolve() == b.resolve()
    except OSError:
        return False


# --- mask (site) ------------------------------------------------------------------------------


def mask(
    update: Annotated[
        Path,
        typer.Argument(
            metavar="SITE.update",
            help="This site's update (from train-local), or - for standard input.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Masked file, or - for standard output. Default: the update's name with .masked.",
            show_default=False,
        ),
    ] = None,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Mask this site's update for secure aggregation: the file that goes to the coordinator.

    On its own the masked file is indistinguishable from random bytes; only the sum of the
    round's masked updates can be unmasked. Values outside the plan's range are clipped (a
    warning says how many). A site masks one update per round, recorded in a state file beside
    the key BEFORE the masked file is written: masking a different update for a round already
    masked is refused (exit 5); masking the same update again remakes the same masked values,
    so a lost .masked file can be recovered.
    """
    from fedxray.artifact import peek_header
    from fedxray.errors import FedxrayError
    from fedxray.fsio import check_writable, read_input, write_atomic
    from fedxray.secagg.protocol import mask_update

    ui = Ui(quiet, json_out)
    check_stdout_use(output, json_out)
    the_plan, ident, state_dir = _party(plan, key, coordinator=False)
    if output is None:
        if str(update) == "-":
            raise FedxrayError(
                "an update read from standard input needs -o FILE", hint="or -o - for stdout"
            )
        output = update.with_suffix(".masked")
    if _same_file(update, output):
        raise FedxrayError(f"the masked file would replace its update: {output}")
    check_writable(output, force=force)
    data = read_input(update, "update")
    warnings: list[str] = []
    masked = mask_update(data, the_plan, ident, state_dir, warn=warnings.append)
    write_atomic(output, masked, force=force)
    r = peek_header(masked).round
    if json_out:
        ui.emit_json(
            {
                "masked": str(output),
                "round": r,
                "site": ident.name,
                "federation": the_plan.federation_id,
                "bytes": len(masked),
                "warnings": warnings,
            }
        )
        return
    for w in warnings:
        ui.info(f"warning: {w}")
    where = "standard output" if str(output) == "-" else str(output)
    ui.info(f"wrote {where} (round {r}, {len(masked) / 1e6:.1f} MB): send it to the coordinator")


# --- aggregate (coordinator) ------------------------------------------------------------------


def aggregate(
    masked: Annotated[
        list[Path],
        typer.Argument(
            metavar="SITE.masked",
            help="The masked updates that arrived for the round (- reads one from standard input).",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The sum, or - for standard output. Default: round-NNNN.sum beside the "
            "coordinator key.",
            show_default=False,
        ),
    ] = None,
    closure: Annotated[
        Path | None,
        typer.Option(
            "--closure",
            help="Where to write the closure, if one is needed. Default: round-NNNN.closure "
            "beside the sum.",
            show_default=False,
        ),
    ] = None,
    round_number: Annotated[
        int | None,
        typer.Option(
            "--round",
            help="The round to aggregate. Default: the round every input names.",
            show_default=False,
        ),
    ] = None,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Coordinator: verify and add up the sites' masked updates of one round.

    Every input must be signed by a site of the plan, for this federation, round and global
    model, one per site (exit 3 otherwise); fewer inputs than the plan's minimum are refused
    (exit 5). Memory does not grow with the number of inputs. The coordinator's decision for
    the round is recorded beside its key: a masked file that arrives after the round was
    aggregated cannot join it (exit 5).

    When every site delivered and the plan is not strict, the round needs no second trip: run
    `fedxray unmask` on the sum. Otherwise a closure is written too: send it to the surviving
    sites, each answers with `fedxray reveal`, and read the printed closure id to them by
    phone (reveal prints the same id).
    """
    from fedxray.artifact import peek_header
    from fedxray.errors import FedxrayError
    from fedxray.fsio import check_writable, read_input, write_atomic
    from fedxray.secagg.protocol import aggregate as aggregate_round
    from fedxray.secagg.protocol import closure_code, common_round, plan_params

    ui = Ui(quiet, json_out)
    check_stdout_use(output, json_out)
    check_stdout_use(closure, json_out)
    the_plan, ident, state_dir = _party(plan, key, coordinator=True)
    params = plan_params(the_plan)
    if sum(str(p) == "-" for p in masked) > 1:
        raise FedxrayError("standard input can hold only one of the masked updates")
    for p in masked:
        if str(p) != "-" and not p.is_file():
            what = "is not a file" if p.exists() else "not found"
            raise FedxrayError(f"masked update {what}: {p}")
    # Standard input can be read once only: take it now, the files are read one by one later.
    inputs: list = [read_input("-", "masked update") if str(p) == "-" else p for p in masked]
    labels = ["standard input" if str(p) == "-" else p.name for p in masked]
    r = round_number if round_number is not None else common_round(zip(labels, inputs, strict=True))
    if r < 1:
        raise FedxrayError(f"--round must be at least 1, got {r}")
    out = output if output is not None else state_dir / f"round-{r:04d}.sum"
    closure_out = closure or _beside(out, f"round-{r:04d}.closure", state_dir)
    if str(out) == "-" and str(closure_out) == "-":
        raise FedxrayError("the sum and the closure cannot both go to standard output")
    check_writable(out, force=force)
    # A closure follows whenever a site is missing or the plan is strict: when aggregation
    # succeeds this prediction is exact, so the closure's path is checked before the work too.
    if params.strict or len(inputs) < len(the_plan.sites):
        check_writable(closure_out, force=force)
    with ui.progress() as bar:
        task = bar.add_task(f"round {r}", total=len(inputs))
        total, closure_bytes = aggregate_round(
            inputs,
            the_plan,
            ident,
            r,
            state_dir=state_dir,
            progress=lambda done, _n: bar.update(task, completed=done),
        )
    if closure_bytes is not None:
        write_atomic(closure_out, closure_bytes, force=force)
    write_atomic(out, total, force=force)
    meta = peek_header(total).meta
    survivors, dropped = meta.get("survivors", []), meta.get("dropped", [])
    closure_id = meta.get("closure")
    if json_out:
        ui.emit_json(
            {
                "round": r,
                "sum": str(out),
                "closure": str(closure_out) if closure_bytes is not None else None,
                "closure_id": closure_id,
                "closure_code": closure_code(closure_id) if closure_id else None,
                "survivors": survivors,
                "dropped": dropped,
                "strict": params.strict,
                "reveal_from": survivors if closure_bytes is not None else [],
            }
        )
        return
    ui.info(
        f"round {r}: summed {len(survivors)} masked updates ({', '.join(survivors)})"
        + (f"; dropped: {', '.join(dropped)}" if dropped else "")
    )
    ui.info(f"wrote {'standard output' if str(out) == '-' else out}")
    if closure_bytes is None:
        ui.info(f"no site dropped out: no second trip; next: fedxray unmask {out}")
        return
    where = "standard output" if str(closure_out) == "-" else str(closure_out)
    ui.info(
        f"wrote {where}: send it to {', '.join(survivors)}; each runs `fedxray reveal` on it "
        "and sends back its .reveal file"
    )
    ui.info(f"closure id: {closure_code(closure_id)} (read it to each site; reveal prints it)")


# --- reveal (site) ----------------------------------------------------------------------------


def reveal(
    closure: Annotated[
        Path,
        typer.Argument(
            metavar="ROUND.closure",
            help="The closure the coordinator sent, or - for standard input.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The reveal file, or - for standard output. Default: SITE-round-NNNN.reveal "
            "beside the closure.",
            show_default=False,
        ),
    ] = None,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer the coordinator's closure: release this round's seeds shared with dropped sites.

    Run it only when the coordinator sends a closure (a site dropped out, or the plan is
    strict). The closure must be signed by the coordinator, for this federation, and list the masked
    update this site sent for that round (exit 3 otherwise). A site listed as dropped, or one
    that has not masked an update for the round, reveals nothing (exit 5). A site answers one
    closure per round, recorded beside its key: a different closure for the same round is
    refused (exit 5); keep both files, they prove the coordinator misbehaved. Compare the
    printed closure id with the one the coordinator reads to you by phone before sending the
    .reveal file back.
    """
    from fedxray.artifact import peek_header
    from fedxray.errors import FedxrayError
    from fedxray.fsio import check_writable, read_input, write_atomic
    from fedxray.secagg.protocol import closure_code
    from fedxray.secagg.protocol import reveal as reveal_round

    ui = Ui(quiet, json_out)
    check_stdout_use(output, json_out)
    the_plan, ident, state_dir = _party(plan, key, coordinator=False)
    data = read_input(closure, "closure")
    if output is None:
        r = getattr(peek_header(data), "round", None)
        if r is None:
            raise FedxrayError(
                f"{closure} is not a readable closure", hint="check the file, or name -o FILE"
            )
        output = _beside(closure, f"{ident.name}-round-{r:04d}.reveal", Path("."))
    check_writable(output, force=force)
    answer = reveal_round(data, the_plan, ident, state_dir)
    write_atomic(output, answer, force=force)
    # Verified by reveal_round above: the closure's header is now trustworthy.
    head = peek_header(data)
    meta, r = head.meta, head.round
    closure_id = meta.get("closure", "")
    dropped = meta.get("dropped", [])
    if json_out:
        ui.emit_json(
            {
                "reveal": str(output),
                "round": r,
                "site": ident.name,
                "closure_id": closure_id,
                "closure_code": closure_code(closure_id),
                "survivors": meta.get("survivors", []),
                "dropped": dropped,
                "strict": meta.get("strict"),
            }
        )
        return
    released = [f"the seeds shared with {', '.join(dropped)}"] if dropped else []
    if meta.get("strict"):
        released.append("this site's own self-mask seed (strict mode)")
    ui.info(f"round {r}: reveals {' and '.join(released)}")
    ui.info(f"closure id: {closure_code(closure_id)} (must match what the coordinator reads)")
    where = "standard output" if str(output) == "-" else str(output)
    ui.info(f"wrote {where}: send it to the coordinator")


# --- unmask (coordinator) ---------------------------------------------------------------------


def unmask(
    total: Annotated[
        Path,
        typer.Argument(metavar="ROUND.sum", help="The round's sum, or - for standard input."),
    ],
    reveals: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="SITE.reveal",
            help="The survivors' reveal files (only when aggregate made a closure).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The next global model, or - for standard output. Default: round-NNNN.model "
            "(the next round) beside the sum.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="The round's global model. Default: round-NNNN.model beside the sum.",
            show_default=False,
        ),
    ] = None,
    fresh_server_state: Annotated[
        bool,
        typer.Option(
            "--fresh-server-state",
            help="Momentum/FedAdam: start the optimiser state afresh when its file is missing "
            "after round 1, instead of refusing.",
        ),
    ] = False,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Coordinator: remove the masks from a round's sum and write the next global model.

    Checks the sum against the round's global model and, when aggregate made a closure, needs
    the .reveal file of every surviving site (exit 3 for a reveal that does not fit). The
    average is weighted by the sites' example counts, of which only the total is learnt. The
    plan's server optimiser is applied; its state (momentum, FedAdam) lives beside the
    coordinator key, and running unmask again for the same round recomputes the same step
    instead of applying it twice. The next model records its provenance: round, contributing
    and dropped sites, and the privacy (epsilon) each site reported. A round that was
    abandoned cannot be unmasked (exit 5).
    """
    from fedxray.artifact import peek_header
    from fedxray.errors import FedxrayError
    from fedxray.fsio import check_writable, read_input, write_atomic
    from fedxray.modelfile import model_filename
    from fedxray.secagg.protocol import unmask as unmask_round
    from fedxray.secagg.server_state import server_state_path

    ui = Ui(quiet, json_out)
    check_stdout_use(output, json_out)
    the_plan, ident, state_dir = _party(plan, key, coordinator=True)
    reveal_files = list(reveals or [])
    if any(str(p) == "-" for p in reveal_files):
        raise FedxrayError("reveals are read from files, not standard input")
    sum_bytes = read_input(total, "sum")
    r = getattr(peek_header(sum_bytes), "round", None)
    if r is None:
        raise FedxrayError(f"{total} is not a readable sum", hint="check the file")
    model_path = model or _beside(total, model_filename(r), Path("."))
    out = output or _beside(total, model_filename(r + 1), Path("."))
    if _same_file(out, model_path):
        raise FedxrayError(f"the next model would replace round {r}'s model: {out}")
    check_writable(out, force=force)
    model_bytes = read_input(model_path, "global model")
    nxt = unmask_round(
        sum_bytes,
        reveal_files,
        the_plan,
        ident,
        model_bytes,
        server_state_path(state_dir, the_plan),
        fresh_server_state=fresh_server_state,
        state_dir=state_dir,
    )
    write_atomic(out, nxt, force=force)
    prov = peek_header(nxt).meta.get("provenance", {})
    if json_out:
        ui.emit_json({"model": str(out), "round": r + 1, "provenance": prov})
        return
    eps = prov.get("epsilon", {})
    rows = [(s, "contributed", _eps(eps.get(s))) for s in prov.get("sites", [])]
    rows += [(s, "dropped", "-") for s in prov.get("dropped", [])]
    optimizer = prov.get("server", {}).get("optimizer", "?")
    ui.table(f"round {r} ({optimizer})", rows, ("site", "this round", "epsilon reported"))
    where = "standard output" if str(out) == "-" else str(out)
    ui.info(f"wrote {where}: round {r + 1}'s global model; send it to every site")


def _eps(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "not reported (no DP?)"


# --- abandon (coordinator) --------------------------------------------------------------------


def abandon(
    model: Annotated[
        Path,
        typer.Argument(metavar="ROUND.model", help="The global model of the round to give up."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="The re-issued model, or - for standard output. Default: round-NNNN.model "
            "(the next round) beside ROUND.model.",
            show_default=False,
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why, for the record (kept in the model's provenance)."),
    ] = None,
    plan: PlanOpt = None,
    key: KeyOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Coordinator: give up a round that cannot finish; re-issue its weights for the next.

    For when a surviving site never returns its reveal, or too few sites deliver. Nothing is
    unmasked. The round is recorded as abandoned beside the coordinator key, so it can no
    longer be aggregated or unmasked (exit 5), and the round's weights are re-issued unchanged
    as the next round's model. A round already unmasked cannot be abandoned (exit 5). The
    privacy the sites spent training the abandoned round stays spent.
    """
    from fedxray.artifact import peek_header
    from fedxray.errors import FedxrayError
    from fedxray.fsio import check_writable, read_input, write_atomic
    from fedxray.modelfile import model_filename
    from fedxray.secagg.protocol import abandon_round

    ui = Ui(quiet, json_out)
    check_stdout_use(output, json_out)
    the_plan, ident, state_dir = _party(plan, key, coordinator=True)
    data = read_input(model, "global model")
    r = getattr(peek_header(data), "round", None)
    if r is None:
        raise FedxrayError(f"{model} is not a readable model", hint="check the file")
    out = output or _beside(model, model_filename(r + 1), Path("."))
    if _same_file(out, model):
        raise FedxrayError(f"the re-issued model would replace round {r}'s model: {out}")
    check_writable(out, force=force)
    nxt = abandon_round(data, the_plan, ident, state_dir, reason=reason)
    write_atomic(out, nxt, force=force)
    if json_out:
        ui.emit_json({"model": str(out), "abandoned_round": r, "round": r + 1, "reason": reason})
        return
    where = "standard output" if str(out) == "-" else str(out)
    ui.info(f"round {r} abandoned; its masked updates, sum and reveals are void")
    ui.info(f"wrote {where}: round {r + 1}'s model, same weights; send it to every site")


def register(app: typer.Typer) -> None:
    app.command("mask")(mask)
    app.command("aggregate")(aggregate)
    app.command("reveal")(reveal)
    app.command("unmask")(unmask)
    app.command("abandon")(abandon)
