"""mask, aggregate, reveal, unmask, abandon: a round of secure aggregation over files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedxray.cli.common import Run, argument, command, output_option
from fedxray.filenames import round_file
from fedxray.fsio import shown
from fedxray.steps.abandon import AbandonResult, abandon_file
from fedxray.steps.aggregate import AggregateResult, aggregate_files
from fedxray.steps.mask import MaskResult, mask_file
from fedxray.steps.reveal import RevealResult, reveal_file
from fedxray.steps.unmask import UnmaskResult, unmask_files
from fedxray.training.accounting import epsilon_text

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


# --- mask (site) ------------------------------------------------------------------------------


@command(acts_as="site", outputs=("output",))
def mask(
    run: Run,
    update: argument(
        "SITE.update", "This site's update (from train-local), or - for standard input."
    ),
    output: output_option(
        "Masked file, or - for standard output. Default: the update's name with .masked."
    ) = None,
) -> None:
    """Mask this site's update for secure aggregation: the file that goes to the coordinator.

    On its own the masked file is indistinguishable from random bytes; only the sum of the
    round's masked updates can be unmasked. Values outside the plan's range are clipped (a
    warning says how many). A site masks one update per round, recorded in a state file beside
    the key BEFORE the masked file is written: masking a different update for a round already
    masked is refused (exit 5); masking the same update again remakes the same masked values,
    so a lost .masked file can be recovered.
    """
    res = mask_file(update, run.party, output=output, force=run.force)
    run.done(res.to_dict(), lambda: _render_mask(run.ui, res))


def _render_mask(ui, res: MaskResult) -> None:
    for w in res.warnings:
        ui.info(f"warning: {w}")
    ui.info(
        f"wrote {shown(res.path)} (round {res.round}, {len(res.data) / 1e6:.1f} MB): "
        "send it to the coordinator"
    )


# --- aggregate (coordinator) ------------------------------------------------------------------


@command(acts_as="coordinator", outputs=("output", "closure"))
def aggregate(
    run: Run,
    masked: Annotated[
        list[Path],
        typer.Argument(
            metavar="SITE.masked",
            help="The masked updates that arrived for the round (- reads one from standard input).",
        ),
    ],
    output: output_option(
        "The sum, or - for standard output. Default: round-NNNN.sum beside the coordinator key."
    ) = None,
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
    with run.ui.progress(unit="files") as bar:
        task = bar.add_task("aggregating", total=len(masked))
        res = aggregate_files(
            masked,
            run.party,
            round=round_number,
            output=output,
            closure_output=closure,
            force=run.force,
            progress=lambda done, _n: bar.update(task, completed=done),
        )
    run.done(res.to_dict(), lambda: _render_aggregate(run, res))


def _render_aggregate(run: Run, res: AggregateResult) -> None:
    ui = run.ui
    ui.info(
        f"round {res.round}: summed {len(res.survivors)} masked updates "
        f"({', '.join(res.survivors)})"
        + (f"; dropped: {', '.join(res.dropped)}" if res.dropped else "")
    )
    ui.info(f"wrote {shown(res.sum_path)}")
    if res.closure_path is None:
        ui.info("no site dropped out: no second trip")
        ui.info(f"next: {run.next_command('unmask', res.sum_path)}")
        return
    ui.info(
        f"wrote {shown(res.closure_path)}: send it to {', '.join(res.reveal_from)}; each runs "
        "`fedxray reveal` on it and sends back its .reveal file"
    )
    ui.info(f"closure id: {res.closure_code} (read it to each site; reveal prints it)")
    reveals = [Path(round_file("reveal", res.round, s)) for s in res.reveal_from]
    then = run.next_command("unmask", res.sum_path, *reveals)
    ui.info(f"next, once their .reveal files are here: {then}")


# --- reveal (site) ----------------------------------------------------------------------------


@command(acts_as="site", outputs=("output",))
def reveal(
    run: Run,
    closure: argument(
        "ROUND.closure", "The closure the coordinator sent, or - for standard input."
    ),
    output: output_option(
        "The reveal file, or - for standard output. Default: SITE-round-NNNN.reveal beside the "
        "closure."
    ) = None,
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
    res = reveal_file(closure, run.party, output=output, force=run.force)
    run.done(res.to_dict(), lambda: _render_reveal(run.ui, res))


def _render_reveal(ui, res: RevealResult) -> None:
    released = [f"the seeds shared with {', '.join(res.dropped)}"] if res.dropped else []
    if res.strict:
        released.append("this site's own self-mask seed (strict mode)")
    ui.info(f"round {res.round}: reveals {' and '.join(released)}")
    ui.info(f"closure id: {res.closure_code} (must match what the coordinator reads)")
    ui.info(f"wrote {shown(res.path)}: send it to the coordinator")


# --- unmask (coordinator) ---------------------------------------------------------------------


@command(acts_as="coordinator", outputs=("output",))
def unmask(
    run: Run,
    total: argument("ROUND.sum", "The round's sum, or - for standard input."),
    reveals: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="SITE.reveal",
            help="The survivors' reveal files (only when aggregate made a closure).",
            show_default=False,
        ),
    ] = None,
    output: output_option(
        "The next global model, or - for standard output. Default: round-NNNN.model (the next "
        "round) beside the sum."
    ) = None,
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
) -> None:
    """Coordinator: remove the masks from a round's sum and write the next global model.

    Checks the sum against the round's global model and, when aggregate made a closure, needs
    the .reveal file of every surviving site (exit 3 for a reveal that does not fit). The
    average is weighted by the sites' example counts, of which only the total is learnt. The
    plan's server optimiser is applied; its state (momentum, FedAdam) lives beside the
    coordinator key, and running unmask again for the same round recomputes the same step
    instead of applying it twice. The next model records its provenance: round, contributing
    and dropped sites, and the privacy (epsilon) each site reported. A round that was
    abandoned cannot be unmasked (exit 5). When the plan averages the last K global models
    (init --average-last K), it also writes NAME.averaged.model beside the next model: their
    mean, the model to evaluate and publish; the sites train from the next model itself.
    """
    res = unmask_files(
        run.party,
        total,
        list(reveals or []),
        model=model,
        output=output,
        fresh_server_state=fresh_server_state,
        force=run.force,
    )
    run.done(res.to_dict(), lambda: _render_unmask(run, res))


def _render_unmask(run: Run, res: UnmaskResult) -> None:
    ui = run.ui
    eps = res.provenance.get("epsilon", {})
    rows = [(s, "contributed", _eps(eps.get(s))) for s in res.sites]
    rows += [(s, "dropped", "-") for s in res.dropped]
    optimizer = res.provenance.get("server", {}).get("optimizer", "?")
    ui.table(
        f"round {res.round - 1} ({optimizer})", rows, ("site", "this round", "epsilon reported")
    )
    _sent_model(run, res.path, res.round)
    if res.averaged_path is not None:
        rounds = ", ".join(map(str, res.averaged_rounds or []))
        ui.info(f"wrote {shown(res.averaged_path)}: the published average of rounds {rounds}")


def _sent_model(run: Run, path: Path | None, r: int) -> None:
    """What the coordinator does with a model it wrote: round r's, or the federation's final
    one once the plan's rounds are done (there is no round r then)."""
    last = run.party.plan.settings.training.rounds
    if r <= last:
        run.ui.info(f"wrote {shown(path)}: round {r}'s global model; send it to every site")
        return
    run.ui.info(
        f"wrote {shown(path)}: the federation's final model (round {last} was the plan's "
        "last); send it to every site, to evaluate on its held-out data (fedxray evaluate)"
    )


def _eps(value) -> str:
    return epsilon_text(value) if isinstance(value, int | float) else "not reported (no DP?)"


# --- abandon (coordinator) --------------------------------------------------------------------


@command(acts_as="coordinator", outputs=("output",))
def abandon(
    run: Run,
    model: argument("ROUND.model", "The global model of the round to give up."),
    output: output_option(
        "The re-issued model, or - for standard output. Default: round-NNNN.model (the next "
        "round) beside ROUND.model."
    ) = None,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why, for the record (kept in the model's provenance)."),
    ] = None,
) -> None:
    """Coordinator: give up a round that cannot finish; re-issue its weights for the next.

    For when a surviving site never returns its reveal, or too few sites deliver. Nothing is
    unmasked. The round is recorded as abandoned beside the coordinator key, so it can no
    longer be aggregated or unmasked (exit 5), and the round's weights are re-issued unchanged
    as the next round's model. A round already unmasked cannot be abandoned (exit 5). The
    privacy the sites spent training the abandoned round stays spent.
    """
    res = abandon_file(model, run.party, output=output, reason=reason, force=run.force)
    run.done(res.to_dict(), lambda: _render_abandon(run, res))


def _render_abandon(run: Run, res: AbandonResult) -> None:
    run.ui.info(
        f"round {res.abandoned_round} abandoned; its masked updates, sum and reveals are void "
        f"(the model carries round {res.abandoned_round}'s weights unchanged)"
    )
    _sent_model(run, res.path, res.round)


def register(app: typer.Typer) -> None:
    app.command("mask")(mask)
    app.command("aggregate")(aggregate)
    app.command("reveal")(reveal)
    app.command("unmask")(unmask)
    app.command("abandon")(abandon)
