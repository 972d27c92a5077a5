"""`fedxray status` at the coordinator: which files of the round have arrived, from whom,
and what comes next."""

from __future__ import annotations

from pathlib import Path

from fedxray.errors import FedxrayError
from fedxray.filenames import round_file
from fedxray.secagg.records import CoordinatorRound, RoundStatus
from fedxray.steps.party_files import Files, Resident, command, shown_path
from fedxray.steps.protocol_state import lock_path, read_state, state_path
from fedxray.steps.server_state import server_state_path
from fedxray.steps.status_report import Expected, NextCommand, StateFile, Status, Transfer


def coordinator_status(st: Status, who: Resident, files: Files) -> None:
    plan, key = who.plan, who.key_file
    last, sites = plan.settings.training.rounds, plan.site_names
    state_dir = key.parent
    secagg = state_path(state_dir, st.party, plan.federation_id)
    server = server_state_path(state_dir, plan)
    st.state_files = [
        StateFile("private key", key, True),
        StateFile("secure-aggregation state", secagg, secagg.is_file()),
        StateFile("its lock file", lock_path(secagg), lock_path(secagg).is_file()),
        StateFile("server optimiser state", server, server.is_file()),
    ]
    try:
        state = read_state(state_dir, st.party, plan.federation_id, CoordinatorRound)
    except FedxrayError as e:
        st.problems.append(e.message)
        state = None
    made = [r for r in range(1, last + 2) if files.here(round_file("model", r))]
    r = st.round = max(made, default=1)
    model = st.folder / round_file("model", r)
    art = files.verified(model, plan, "model", r, st.party) if model.is_file() else None
    if art is None:
        st.summary = f"round {r}'s model {model.name} is missing or invalid"
        return
    everyone = tuple(sites)
    if r > last:
        st.stage = "finished"
        st.summary = f"federation {plan.name} is finished: {model.name} is its final model"
        st.send.append(Transfer(model, everyone, files.on_stick(model)))
        st.notes.append("each site evaluates it on its held-out data (fedxray evaluate)")
        return
    ctx = _CoordinatorRound(st, who, files, r, art.digest)
    rec = (state.get(r) if state else None) or CoordinatorRound()
    if rec.status is RoundStatus.OPEN:
        if r == 1:
            st.send.append(Transfer(who.plan_file, everyone, files.on_stick(who.plan_file)))
        st.send.append(Transfer(model, everyone, files.on_stick(model)))
        ctx.collect_masked()
    elif rec.status is RoundStatus.ABANDONED:
        st.stage, st.summary = "abandon", f"round {r} was abandoned; its re-issued model is missing"
        st.next.append(NextCommand(
            command("abandon", model, "-o", ctx.next_model, **ctx.party),
            "re-issue the round's weights as the next round's model",
        ))  # fmt: skip
    else:
        dropped = f"; dropped: {', '.join(rec.dropped)}" if rec.dropped else ""
        st.done.append(f"aggregated {', '.join(rec.survivors or [])}{dropped}")
        ctx.collect_reveals(rec)
        if rec.status is RoundStatus.UNMASKED:
            st.notes.append(f"{ctx.next_model.name} is missing: unmask again makes it again")


class _CoordinatorRound:
    def __init__(self, st: Status, who: Resident, files: Files, r: int, parent: str):
        self.st, self.files, self.r, self.parent = st, files, r, parent
        self.plan = who.plan
        self.party = {"plan": who.plan_file, "key": who.key_file}
        self.next_model = st.folder / round_file("model", r + 1)
        self.closure: str | None = None  # the closure id reveals must answer

    def arrived(self, kind: str, senders: list[str]) -> dict[str, Path]:
        out = {}
        for s in senders:
            path, art = self.files.round_file(self.plan, kind, self.r, s, s, self.parent)
            stale = art is not None and kind == "reveal"
            if stale and art.header.meta.get("closure") != self.closure:
                self.st.problems.append(f"{shown_path(path)} answers another closure (not used)")
            elif art is not None:
                out[s] = path
        missing = [s for s in senders if s not in out]
        self.st.arrived[kind] = {s: str(p) for s, p in out.items()}
        self.st.missing[kind] = missing
        self.st.waiting_for += [Expected(round_file(kind, self.r, s), s) for s in missing]
        return out

    def collect_masked(self) -> None:
        st, r = self.st, self.r
        sites = self.plan.site_names
        got = self.arrived("masked", sites)
        missing = st.missing["masked"]
        total = self.st.folder / round_file("sum", r)
        agg = command("aggregate", *got.values(), "-o", total, **self.party)
        least = self.plan.settings.min_sites
        st.summary = f"round {r}: {len(got)} of {len(sites)} masked updates arrived"
        if not missing:
            st.stage = "aggregate"
            st.next.append(NextCommand(agg, "every site delivered: sum the masked updates"))
            return
        st.stage = "wait"
        if len(got) >= least:
            st.next.append(NextCommand(
                agg, f"only to go on without {', '.join(missing)}: then the others must reveal",
            ))  # fmt: skip
        else:
            st.notes.append(f"the plan needs at least {least} sites per round")
        st.notes.append(f"if the round cannot finish: fedxray abandon round-{r:04d}.model")

    def collect_reveals(self, rec: CoordinatorRound) -> None:
        st, r = self.st, self.r
        total = self.st.folder / round_file("sum", r)
        unmask = ("unmask", total)
        why = "every survivor answered: make the next model"
        if rec.needs_reveals:
            closure = self.st.folder / round_file("closure", r)
            survivors = list(rec.survivors or [])
            if closure.is_file():
                st.send.append(Transfer(closure, tuple(survivors), self.files.on_stick(closure)))
            self.closure = rec.closure
            got = self.arrived("reveal", survivors)
            if st.missing["reveal"]:
                st.stage = "wait"
                st.summary = f"round {r}: {len(got)} of {len(survivors)} reveals arrived"
                st.notes.append(f"if a survivor never answers: fedxray abandon round-{r:04d}.model")
                return
            unmask += tuple(got.values())
        else:
            why = "no site dropped out: no second trip"
        st.stage, st.summary = "unmask", f"round {r}: ready to unmask"
        model = self.st.folder / round_file("model", r)
        st.next.append(NextCommand(
            command(*unmask, "--model", model, "-o", self.next_model, **self.party), why,
        ))  # fmt: skip
