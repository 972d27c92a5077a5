"""status: where this party stands, and the exact command to run next."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedxray.cli.common import KeyOpt, PlanOpt, Run, Ui, command
from fedxray.steps.party_files import shown_path
from fedxray.steps.status import STAGES, Status, party_status
from fedxray.training.accounting import epsilon_left_text, epsilon_text

EXAMPLES = {
    "status": [
        ("Where this site stands, files on the USB stick included",
         "fedxray status --inbox /media/usb"),
        ("The coordinator's folder, for a script",
         "fedxray status coord --inbox /media/usb --json | jq -r '.next[0].command'"),
    ],
}  # fmt: skip

_STAGE_LINES = "; ".join(f"{name}: {what}" for name, what in STAGES.items())


@command()
def status(
    run: Run,
    folder: Annotated[
        Path,
        typer.Argument(metavar="FOLDER", help="The party's folder (default: this one)."),
    ] = Path("."),
    plan: PlanOpt = None,
    key: KeyOpt = None,
    inbox: Annotated[
        list[Path] | None,
        typer.Option(
            "--inbox",
            metavar="DIR",
            help="Where files from the other parties arrive (the USB stick, a shared folder); "
            "repeatable. FOLDER/inbox is one too when it exists.",
        ),
    ] = None,
) -> None:
    """Say where this site or coordinator stands, and what to do next.

    Reads FOLDER (the plan, the key, the privacy ledger, the site record, the
    secure-aggregation state, the checkpoints and the round files there or in an --inbox)
    and says which federation and round this party is in, what it has done this round, what
    it waits for and from whom, which files to put on the USB stick and for whom, and the
    exact commands to run next (complete with --plan and --key). The coordinator also sees
    which sites' .masked and .reveal files have arrived for the round and which are missing.
    Files from elsewhere are verified before they count. It only reads: nothing is written
    or locked. The plan and key are found in FOLDER unless named.

    With --json, one document: folder, role (site, coordinator or null), party, federation,
    federation_id, rounds (the plan's), round (the round the party is in; rounds + 1 once
    finished), stage (below), summary, done (this round), waiting_for ([{file, sender}]),
    fetch (arrived files to copy into FOLDER first), next ([{command, argv, why,
    placeholders}]: run next[0] first; a placeholder such as IMAGE_FOLDER is a path only
    you know), send ([{file, to, on_stick}]), arrived and missing (coordinator: per kind,
    masked or reveal, the sites whose file arrived or not), privacy (site: epsilon, budget,
    site_total, site_budget, remaining), state_files ([{what, path, present}]: what to back
    up), notes, problems (files that failed verification, a missing ledger...).

    Stages: {stages}.
    """
    res = party_status(folder, plan=plan, key=key, inboxes=list(inbox or []))
    run.done(res.to_dict(), lambda: render_status(run.ui, res))


status.__doc__ = status.__doc__.replace("{stages}", _STAGE_LINES)


def render_status(ui: Ui, st: Status) -> None:
    say = lambda text: ui.info(escape(text))  # noqa: E731 - one short helper
    if st.role is None:
        say(st.summary)
    else:
        where = "" if st.federation is None else f" of federation {st.federation}"
        at = "" if st.round is None else _round(st)
        who = st.role if st.role == "coordinator" else f"{st.party}, {st.role}"
        say(f"{who}{where}{at}")
        say(f"  {st.summary}")
    if st.done:
        say(f"  done this round: {'; '.join(st.done)}")
    if st.privacy is not None:
        say(f"  privacy: {_privacy(st.privacy)}")
    for kind, sites in st.arrived.items():
        missing = st.missing.get(kind) or []
        text = ", ".join(sites) or "none"
        text += f"; missing: {', '.join(missing)}" if missing else ""
        say(f"  {kind} files arrived: {text}")
    if st.waiting_for:
        waits = ", ".join(f"{w.file} from {w.sender}" for w in st.waiting_for)
        say(f"  waiting for: {waits}")
    for t in st.send:
        there = " (already on the stick)" if t.on_stick else ""
        say(f"  to the USB stick: {shown_path(t.file)} -> {', '.join(t.to)}{there}")
    kept = [shown_path(s.path) for s in st.state_files if s.present and not s.lock]
    if kept:
        say(f"  keeps here (back up, never send): {', '.join(kept)}")
    for note in st.notes:
        say(f"  note: {note}")
    for problem in st.problems:
        say(f"  problem: {problem}")
    if st.fetch or st.next:
        say("next:")
    for f in st.fetch:
        say(f"  cp {shown_path(f)} {shown_path(st.folder)}/")
    for c in st.next:
        say(f"  {c.text}")
        say(f"      # {c.why}")


def _round(st: Status) -> str:
    if st.rounds is not None and st.round > st.rounds:
        return f", finished ({st.rounds} rounds)"
    return f", round {st.round} of {st.rounds}"


def _privacy(p: dict) -> str:
    text = f"epsilon {epsilon_text(p['epsilon'])} of {p['budget']:g} in this federation"
    if p["site_budget"] is not None:
        text += (
            f"; site total {epsilon_text(p['site_total'])} of its budget {p['site_budget']:g} "
            f"({epsilon_left_text(p['site_budget'], p['site_total'])} left)"
        )
    return text


def register(app: typer.Typer) -> None:
    app.command("status")(status)
