"""The `status` step: where a site or the coordinator stands in its federation.

It reads the party's folder (plan, key, ledger, site record, secure-aggregation state,
checkpoints, and the round files present there or arrived in its inboxes) and says which
federation and round the party is in, what it has done this round, what it waits for and
from whom, which files go to whom, and the exact commands to run next. It only reads: no
lock is taken, nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.steps.party_files import Files, Resident, command, locate
from fedxray.steps.status_coordinator import coordinator_status
from fedxray.steps.status_report import STAGES, Expected, NextCommand, Status, Transfer
from fedxray.steps.status_site import site_status

__all__ = ["STAGES", "Status", "party_status"]


def party_status(
    folder: str | os.PathLike = ".",
    *,
    plan: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
    inboxes: list[str | os.PathLike] = (),
) -> Status:
    """The status of the party whose folder ``folder`` is. ``inboxes``: where files from the
    other parties arrive (the USB stick); FOLDER/inbox is one too when it exists."""
    root = Path(folder)
    if not root.is_dir():
        raise FedxrayError(f"no such folder: {root}")
    files = Files(root, [Path(p) for p in inboxes])
    who = locate(root, files, Path(plan) if plan else None, Path(key) if key else None)
    st = Status(root)
    if who.identity is None:
        _nobody(st, who, files)
    else:
        st.role, st.party = who.role, who.identity.name
        if who.plan is None:
            _site_without_plan(st, who, files)
        else:
            p = who.plan
            st.federation, st.federation_id = p.name, p.federation_id
            st.rounds = p.settings.training.rounds
            if plan is None and files.here(who.plan_file.name) is None:
                st.fetch.append(files.arrived(who.plan_file.name))  # still to be copied in
            (coordinator_status if st.role == "coordinator" else site_status)(st, who, files)
    st.problems = files.problems + st.problems
    return st


# -- before a federation exists ---------------------------------------------------------------
def _nobody(st: Status, who: Resident, files: Files) -> None:
    """A folder without a key: a site's before keygen, or the coordinator's before init (status
    cannot tell which, so it names both)."""
    st.summary = "no key here: nobody's folder yet"
    st.next.append(NextCommand(
        command("keygen", "SITE_NAME", "-o", st.folder), "at a site: create its identity",
    ))  # fmt: skip
    cards = sorted(p for box in files.inboxes for p in box.glob("*.pub"))
    cards = [p for p in cards if p.stem != "coordinator"]
    if who.plan is None and cards:
        argv = command("init", "--name", "FEDERATION_NAME", "-o", st.folder, *cards)
        st.next.append(NextCommand(
            argv, f"at the coordinator: the federation, from the {len(cards)} site card(s) that "
            "arrived (compare their fingerprints with what the sites read out by phone first)",
        ))  # fmt: skip
    else:
        st.notes.append("the coordinator runs init once the sites' cards have arrived")


def _site_without_plan(st: Status, who: Resident, files: Files) -> None:
    card = who.key_file.with_suffix(".pub")
    st.stage = "plan"
    st.summary = f"{st.party}: identity made, no plan yet"
    st.done.append(f"created its identity (fingerprint {who.identity.public.fingerprint})")
    if card.is_file():
        st.send.append(Transfer(card, ("coordinator",), files.on_stick(card)))
    st.waiting_for += [Expected("the federation's .plan", "coordinator"),
                       Expected("round-0001.model", "coordinator")]  # fmt: skip
