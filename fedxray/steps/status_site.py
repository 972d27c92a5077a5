"""`fedxray status` at a site: which round it is in, what it did, what comes next."""

from __future__ import annotations

from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.filenames import round_file
from fedxray.plan import Plan
from fedxray.secagg.rounds import read_cohort
from fedxray.steps.party_files import Files, Resident, command, shown_path
from fedxray.steps.privacy import privacy_report
from fedxray.steps.protocol_state import lock_path, read_state, state_path
from fedxray.steps.shared import plan_params
from fedxray.steps.site_memory import SiteFiles, check_ledger, site_stem
from fedxray.steps.status_report import Expected, NextCommand, StateFile, Status, Transfer
from fedxray.training.accounting import epsilon_text, epsilon_value
from fedxray.training.ledger import SiteLedger


def site_status(st: Status, who: Resident, files: Files) -> None:
    plan, me, key = who.plan, st.party, who.key_file
    last = plan.settings.training.rounds
    mine = SiteFiles.beside_key(key)
    secagg = state_path(mine.state_dir, me, plan.federation_id)
    st.state_files = [
        StateFile("private key", key, True),
        StateFile("privacy ledger", mine.ledger, mine.ledger.is_file()),
        StateFile("site record", mine.record, mine.record.is_file()),
        StateFile("checkpoints", mine.checkpoints, mine.checkpoints.is_dir()),
        StateFile("secure-aggregation state", secagg, secagg.is_file()),
        StateFile("its lock file", lock_path(secagg), lock_path(secagg).is_file()),
    ]
    ledger, state = _site_memory(st, mine, plan)
    trained = {row.round: row for row in ledger.rounds()} if ledger else {}
    masked = state.round_numbers() if state else []
    r = max([1, *files.rounds_with("model", last + 1), *trained, *masked])
    st.round = r
    ctx = _SiteRound(st, who, files, r, mine)
    shard = st.folder / f"{site_stem(key)}.shard"
    if r > last:
        ctx.finished(shard)
    elif not shard.is_file() and not trained:
        st.stage, st.summary = "prep", "no shard yet"
        st.next += [
            NextCommand(command("verify", ctx.plan_file, key=key),
                        "compare the coordinator fingerprint it prints with the one read out "
                        "by phone"),
            NextCommand(command("prep", "IMAGE_FOLDER", "-o", shard, plan=ctx.plan_file, key=key),
                        "the site's images as its shard, which never leaves the site"),
        ]  # fmt: skip
    else:
        ctx.round(shard, trained.get(r), state.get(r) if state else None)
    if not shard.is_file() and st.stage not in ("prep", "finished"):
        st.problems.append(f"the site's shard {shown_path(shard)} is missing")


def _site_memory(st: Status, mine: SiteFiles, plan: Plan):
    """The federation's ledger entry and the secure-aggregation state (None when absent)."""
    ledger = state = None
    try:
        check_ledger(mine, st.party)  # a missing or foreign ledger: training will refuse
        site = SiteLedger.load(mine.ledger)
        if site.exists and plan.federation_id in site.federation_ids():
            ledger = site.federation(plan.federation_id)
            st.privacy = _privacy(mine.ledger, plan)
    except FedxrayError as e:
        st.problems.append(e.message)
    try:
        state = read_state(mine.state_dir, st.party, plan.federation_id)
    except FedxrayError as e:
        st.problems.append(e.message)
    return ledger, state


def _privacy(ledger: Path, plan: Plan) -> dict:
    report = privacy_report(ledger, plan)
    fed = report.federations[0] if report.federations else None
    budget = report.budget
    return {
        "epsilon": epsilon_value(fed.epsilon) if fed else 0.0,
        "budget": plan.settings.dp.epsilon,
        "site_total": epsilon_value(report.total_epsilon),
        "site_budget": None if budget is None else budget.epsilon,
        "remaining": epsilon_value(report.remaining),
    }


class _SiteRound:
    """The decisions for one round at a site."""

    def __init__(self, st: Status, who: Resident, files: Files, r: int, mine: SiteFiles):
        self.st, self.files, self.r, self.mine = st, files, r, mine
        self.plan, self.key, self.me = who.plan, who.key_file, st.party
        self.plan_file = who.plan_file
        self.coordinator = self.plan.coordinator.name
        self.party = {"plan": self.plan_file, "key": self.key}

    def path(self, kind: str, own: bool = False) -> Path:
        return self.st.folder / round_file(kind, self.r, self.me if own else None)

    def need(self, kind: str, r: int, sender: str, fetch: bool) -> Path | None:
        """Round ``r``'s file of ``kind`` from ``sender``: here, or arrived (then copied in
        when ``fetch``), or waited for."""
        name = round_file(kind, r)
        path, art = self.files.round_file(self.plan, kind, r, sender)
        if art is None:
            if path is None:
                self.st.waiting_for.append(Expected(name, sender))
            return None
        if self.files.here(name) is None and fetch:
            self.st.fetch.append(path)
        return path

    def finished(self, shard: Path) -> None:
        st, final = self.st, self.path("model")
        st.stage = "finished"
        st.summary = (f"federation {st.federation} is finished: {final.name} is its final model "
                      f"(after round {st.rounds})")  # fmt: skip
        if self.need("model", self.r, self.coordinator, fetch=True) is None:
            return
        tests = [p for p in sorted(st.folder.glob("*.shard"))
                 if p.name not in (shard.name, f"{site_stem(self.key)}.holdout.shard")]  # fmt: skip
        test = tests[0] if tests else st.folder / "test.shard"
        if not tests:
            st.next.append(NextCommand(
                command("prep", "TEST_IMAGE_FOLDER", "-o", test, **self.party),
                "a test shard from held-out, labelled images of patients not in the training shard",
            ))  # fmt: skip
        st.next.append(NextCommand(
            command("evaluate", final, test, "--plan", self.plan_file),
            "measure the final model on held-out data",
        ))  # fmt: skip

    def round(self, shard: Path, trained, masked) -> None:
        st, r = self.st, self.r
        update, masked_file = self.path("update", own=True), self.path("masked", own=True)
        train = NextCommand(
            command("train-local", self.path("model"), "--data", shard, "-o", update,
                    **self.party),
            f"train round {r} with differential privacy; the update stays here",
        )  # fmt: skip
        mask = NextCommand(
            command("mask", update, "-o", masked_file, **self.party),
            "hide the update: the masked file is what goes to the coordinator",
        )
        if trained is not None:
            eps = (
                "" if st.privacy is None else f", epsilon now {epsilon_text(st.privacy['epsilon'])}"
            )
            word = "trained" if trained.finished else "started training"
            st.done.append(f"{word} round {r} ({trained.epochs} epoch record(s){eps})")
        if masked is None:
            if trained is not None and trained.finished and update.is_file():
                st.stage, st.summary = "mask", f"round {r} trained, not masked yet"
                st.next.append(mask)
                return
            if self.need("model", r, self.coordinator, fetch=True) is None:
                st.stage, st.summary = "wait", f"waiting for round {r}'s model"
                return
            st.stage, st.summary = "train", f"round {r} to train"
            if trained is not None and trained.finished:
                st.notes.append(f"{update.name} is missing: train-local makes the same bytes "
                                "again from the round's checkpoint and spends nothing")  # fmt: skip
            elif trained is not None:
                st.notes.append(f"training of round {r} was interrupted: the same command "
                                "resumes it and counts nothing twice")  # fmt: skip
            st.next += [train, mask]
            return
        st.done.append(f"masked its update ({masked_file.name})")
        if not masked_file.is_file():
            st.stage, st.summary = "mask", f"{masked_file.name} is missing"
            st.notes.append("masking the same update again makes the same file")
            st.next.append(mask)
            return
        st.send.append(Transfer(masked_file, (self.coordinator,), self.files.on_stick(masked_file)))
        self._closure(masked)

    def _closure(self, masked) -> None:
        st, r = self.st, self.r
        nxt = round_file("model", r + 1)
        path, art = self.files.round_file(self.plan, "closure", r, self.coordinator)
        cohort = None
        if art is not None:
            try:
                cohort = read_cohort(art.header.meta, self.plan, plan_params(self.plan), path.name)
            except FedxrayError as e:
                st.problems.append(e.message)
        reveal_file = self.path("reveal", own=True)
        if cohort is not None and self.me in cohort.dropped:
            st.notes.append(f"the coordinator closed round {r} without {self.me}'s update")
        elif cohort is not None and cohort.needs_reveals:
            if masked.closure is None or not reveal_file.is_file():
                st.stage, st.summary = "reveal", f"round {r}'s closure to answer"
                if self.files.here(path.name) is None:
                    st.fetch.append(path)
                st.next.append(NextCommand(
                    command("reveal", self.path("closure"), "-o", reveal_file, **self.party),
                    "compare the closure id it prints with the one the coordinator reads out",
                ))  # fmt: skip
                return
            st.done.append(f"revealed for the closure ({reveal_file.name})")
            st.send.append(
                Transfer(reveal_file, (self.coordinator,), self.files.on_stick(reveal_file))
            )
        st.stage = "wait"
        st.summary = f"round {r} done here, waiting for the coordinator"
        st.waiting_for.append(Expected(nxt, self.coordinator))
        if cohort is None:
            st.notes.append(f"if a site drops out, round-{r:04d}.closure comes first")
