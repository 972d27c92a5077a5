"""`fedxray status` at every step of the example workflow (examples/demo-offline.sh).

The workflow runs in-process with the demo's folders (one per party, usb/ the only way
between them) and tiny settings: keygen, init, prep, round 1 (train, mask, aggregate,
unmask), round 2 with hospital-c dropping out (closure, two reveals, unmask), evaluate.
Before every step, status runs for every party; the party about to act must print, as its
first next command, the very command the workflow runs (compared option by option after
parsing both with the CLI's parser), complete with --plan and --key.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from fedxray.cli.main import app
from fedxray.steps.status import STAGES
from fedxray.steps.status_report import PLACEHOLDERS
from tests.cli_helpers import run_cli
from tests.conftest import REPO

SITES = ("hospital-a", "hospital-b", "hospital-c")
PARTIES = (*SITES, "coordinator")
FED = "pneumo"
READ_ONLY = {"verify", "privacy", "inspect", "status"}


@dataclass
class Step:
    party: str
    argv: list  # fedxray's arguments; [] for a step that only copies files
    fetch: list = field(default_factory=list)  # files copied from the stick first
    carry: list = field(default_factory=list)  # files put on the stick afterwards


class Workflow:
    def __init__(self, root: Path):
        self.root, self.usb, self.coord = root, root / "usb", root / "coordinator"
        for p in (*PARTIES, "usb"):
            (root / p).mkdir()

    def folder(self, party: str) -> Path:
        return self.root / party

    def site(self, s: str) -> dict:
        f = self.folder(s)
        return {"plan": f / f"{FED}.plan", "key": f / f"{s}.key", "dir": f}

    def steps(self) -> list[Step]:
        usb, coord = self.usb, self.coord
        cplan, ckey = coord / f"{FED}.plan", coord / "coordinator.key"
        out: list[Step] = []
        for s in SITES:
            out.append(Step(s, ["keygen", s, "-o", self.folder(s)],
                            carry=[self.folder(s) / f"{s}.pub"]))  # fmt: skip
        out.append(Step("coordinator", [
            "init", "--name", FED, "-o", coord, *(usb / f"{s}.pub" for s in SITES),
            "--model", "tinycnn", "--rounds", "2", "--local-epochs", "1", "--image-size", "16",
            "--min-sites", "2",
        ], carry=[cplan, coord / "round-0001.model"]))  # fmt: skip
        for s in SITES:
            p = self.site(s)
            out.append(Step(s, ["verify", p["plan"], "--key", p["key"]], fetch=[f"{FED}.plan"]))
            shard = p["dir"] / f"{s}.shard"
            out.append(Step(s, ["prep", REPO / "sample_data" / s, "-o", shard, "--workers", "1",
                                "--plan", p["plan"], "--key", p["key"]]))  # fmt: skip
        for r, active in ((1, SITES), (2, SITES[:2])):  # hospital-c drops out of round 2
            R = f"{r:04d}"
            for s in active:
                p = self.site(s)
                upd, msk = p["dir"] / f"{s}-round-{R}.update", p["dir"] / f"{s}-round-{R}.masked"
                out.append(Step(s, ["train-local", p["dir"] / f"round-{R}.model", "--data",
                                    p["dir"] / f"{s}.shard", "--plan", p["plan"], "--key",
                                    p["key"], "-o", upd], fetch=[f"round-{R}.model"]))  # fmt: skip
                out.append(Step(s, ["mask", upd, "--plan", p["plan"], "--key", p["key"], "-o", msk],
                                carry=[msk]))  # fmt: skip
            summed = coord / f"round-{R}.sum"
            out.append(Step("coordinator", [
                "aggregate", *(usb / f"{s}-round-{R}.masked" for s in active), "--plan", cplan,
                "--key", ckey, "-o", summed,
            ], carry=[coord / f"round-{R}.closure"] if r == 2 else []))  # fmt: skip
            reveals = []
            if r == 2:
                for s in active:
                    p = self.site(s)
                    rv = p["dir"] / f"{s}-round-{R}.reveal"
                    out.append(Step(s, ["reveal", p["dir"] / f"round-{R}.closure", "--plan",
                                        p["plan"], "--key", p["key"], "-o", rv],
                                    fetch=[f"round-{R}.closure"], carry=[rv]))  # fmt: skip
                    reveals.append(usb / rv.name)
            nxt = coord / f"round-{r + 1:04d}.model"
            out.append(Step("coordinator", [
                "unmask", summed, *reveals, "--plan", cplan, "--key", ckey, "--model",
                coord / f"round-{R}.model", "-o", nxt,
            ], carry=[nxt]))  # fmt: skip
        p = self.site("hospital-a")
        test = p["dir"] / "test.shard"
        out.append(Step("hospital-a", ["prep", REPO / "sample_data" / "test", "-o", test,
                                       "--workers", "1", "--plan", p["plan"], "--key", p["key"]],
                        fetch=["round-0003.model"]))  # fmt: skip
        out.append(Step("hospital-a", ["evaluate", p["dir"] / "round-0003.model", test,
                                       "--plan", p["plan"], "--bootstrap", "50"]))  # fmt: skip
        return out

    def status(self, party: str) -> dict:
        r = run_cli("status", self.folder(party), "--inbox", self.usb, "--json")
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        doc["text"] = r.err
        return doc


def parse(argv: list[str]):
    """The command line parsed as the CLI parses it, without running it."""
    group = typer.main.get_command(app)
    with group.make_context("fedxray", [argv[0]]) as ctx:
        cmd = group.get_command(ctx, argv[0])
        assert cmd is not None, argv
        return cmd.make_context(argv[0], list(argv[1:]), parent=ctx)


def _norm(value):
    if isinstance(value, Path):
        return value.resolve()
    if isinstance(value, list | tuple):
        return sorted(_norm(v) for v in value)
    return value


def same_command(printed: list[str], ran: list[str]) -> None:
    """Every option and argument that status printed has the workflow's value (placeholders,
    which stand for paths only the technician knows, excepted)."""
    assert printed[0] == "fedxray" and printed[1] == ran[0], (printed, ran)
    got, want = parse(printed[1:]), parse(ran)
    for name, value in got.params.items():
        if got.get_parameter_source(name).name != "COMMANDLINE":  # printed, not a default
            continue
        if any(str(v) in PLACEHOLDERS for v in (value if isinstance(value, list) else [value])):
            continue
        assert _norm(value) == _norm(want.params[name]), (name, printed, ran)


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """Run the workflow; before every step (and before its copies from the stick), every
    party's status: [step index][party] -> status document (+ "text": what it printed)."""
    wf = Workflow(tmp_path_factory.mktemp("day"))
    seen, results = [], []
    for step in wf.steps():
        seen.append({p: wf.status(p) for p in PARTIES})
        for name in step.fetch:  # status said to copy them in first
            shutil.copy2(wf.usb / name, wf.folder(step.party) / name)
        if step.argv:
            res = run_cli(*step.argv, "-q" if step.argv[0] != "evaluate" else "--json")
            assert res.code == 0, (step.argv, res.err)
            results.append((step, res))
        for f in step.carry:
            shutil.copy2(f, wf.usb / f.name)
    seen.append({p: wf.status(p) for p in PARTIES})
    return wf, wf.steps(), seen, results


def test_the_party_about_to_act_prints_the_workflow_s_next_command(day):
    _, steps, seen, _ = day
    for i, step in enumerate(steps):
        doc = seen[i][step.party]
        assert doc["next"], (step.argv, doc["text"])
        commands = [c["argv"] for c in doc["next"]]
        first = commands[0]
        if step.argv[0] == "prep" and first[1] == "verify":  # verify only reads: done before
            first = commands[1]
        if doc["role"] is None:  # nobody's folder yet: keygen for a site, init for a coordinator
            first = next(c for c in commands if c[1] == step.argv[0])
        same_command([str(a) for a in first], [str(a) for a in step.argv])
        # Complete as printed: the party's plan and key are on the line (keygen, init and
        # evaluate act as nobody).
        if step.argv[0] not in ("keygen", "init", "evaluate", "verify"):
            assert "--plan" in first and "--key" in first, first
        # What the workflow copies off the stick first, status lists as copies to make.
        assert [Path(p).name for p in doc["fetch"]] == step.fetch, (step.argv, doc["fetch"])


def test_every_next_command_parses(day):
    _, _, seen, _ = day
    for statuses in seen:
        for doc in statuses.values():
            for c in doc["next"]:
                parse([str(a) for a in c["argv"][1:]])
                assert c["command"].split()[:2] == [str(a) for a in c["argv"][:2]]


def test_stages_along_the_day(day):
    _, steps, seen, _ = day
    stages = [{p: seen[i][p]["stage"] for p in PARTIES} for i in range(len(seen))]
    for s in stages:
        assert set(s.values()) <= set(STAGES)
    first = stages[0]
    assert first == {"hospital-a": "new", "hospital-b": "new", "hospital-c": "new",
                     "coordinator": "new"}  # fmt: skip
    init = next(i for i, st in enumerate(steps) if st.argv[0] == "init")
    assert stages[init]["coordinator"] == "new"
    assert stages[init]["hospital-a"] == "plan"  # identity made, waiting for the plan
    aggregates = [i for i, st in enumerate(steps) if st.argv[0] == "aggregate"]
    unmasks = [i for i, st in enumerate(steps) if st.argv[0] == "unmask"]
    assert all(stages[i]["coordinator"] == "aggregate" for i in aggregates[:1])
    assert stages[aggregates[1]]["coordinator"] == "wait"  # hospital-c never delivered
    assert all(stages[i]["coordinator"] == "unmask" for i in unmasks)
    # Round 2 at a survivor: masked and waiting; then the closure to answer; then waiting.
    reveal = next(i for i, st in enumerate(steps) if st.argv[:1] == ["reveal"])
    assert stages[reveal]["hospital-a"] == "reveal"
    assert stages[aggregates[1]]["hospital-a"] == "wait"
    assert stages[reveal + 1]["hospital-a"] == "wait"
    assert stages[-1] == {"hospital-a": "finished", "hospital-b": "finished",
                          "hospital-c": "finished", "coordinator": "finished"}  # fmt: skip


def test_site_says_what_it_did_what_it_waits_for_and_what_to_carry(day):
    _, steps, seen, _ = day
    after_mask = next(i for i, st in enumerate(steps) if st.argv[0] == "aggregate")
    doc = seen[after_mask]["hospital-a"]
    assert doc["round"] == 1 and doc["federation"] == FED and doc["rounds"] == 2
    assert any("trained round 1" in d for d in doc["done"])
    assert any("masked" in d for d in doc["done"])
    assert doc["send"] == [{"file": doc["send"][0]["file"], "to": ["coordinator"],
                            "on_stick": True}]  # fmt: skip
    assert doc["send"][0]["file"].endswith("hospital-a-round-0001.masked")
    assert {w["file"] for w in doc["waiting_for"]} == {"round-0002.model"}
    assert {w["sender"] for w in doc["waiting_for"]} == {"coordinator"}
    assert doc["privacy"]["budget"] == 8 and 0 < doc["privacy"]["epsilon"] <= 8
    kept = {s["what"] for s in doc["state_files"] if s["present"]}
    assert {"private key", "privacy ledger", "site record", "checkpoints",
            "secure-aggregation state"} <= kept  # fmt: skip
    assert "hospital-a, site of federation pneumo, round 1 of 2" in doc["text"]


def test_coordinator_sees_which_files_arrived_and_which_are_missing(day):
    _, steps, seen, _ = day
    aggregates = [i for i, st in enumerate(steps) if st.argv[0] == "aggregate"]
    full, partial = seen[aggregates[0]]["coordinator"], seen[aggregates[1]]["coordinator"]
    assert set(full["arrived"]["masked"]) == set(SITES) and full["missing"]["masked"] == []
    assert set(partial["arrived"]["masked"]) == {"hospital-a", "hospital-b"}
    assert partial["missing"]["masked"] == ["hospital-c"]
    assert partial["waiting_for"] == [{"file": "hospital-c-round-0002.masked",
                                       "sender": "hospital-c"}]  # fmt: skip
    assert "without hospital-c" in partial["next"][0]["why"]
    # After the dropout round's aggregate: the closure goes to the survivors, reveals awaited.
    after = seen[aggregates[1] + 1]["coordinator"]
    assert after["stage"] == "wait" and after["missing"]["reveal"] == ["hospital-a", "hospital-b"]
    closure = [t for t in after["send"] if t["file"].endswith("round-0002.closure")]
    assert closure and closure[0]["to"] == ["hospital-a", "hospital-b"]
    # One reveal in: one still missing.
    one = next(i for i, st in enumerate(steps) if st.argv[0] == "reveal") + 1
    assert seen[one]["coordinator"]["missing"]["reveal"] == ["hospital-b"]
    assert (
        "reveal files arrived: hospital-a; missing: hospital-b" in seen[one]["coordinator"]["text"]
    )


def test_status_before_anything_and_after_the_last_round(day):
    _, steps, seen, _ = day
    new = seen[0]["coordinator"]
    assert new["role"] is None and [a[1] for a in (n["argv"] for n in new["next"])] == ["keygen"]
    init = next(i for i, st in enumerate(steps) if st.argv[0] == "init")
    offered = [n["argv"][1] for n in seen[init]["coordinator"]["next"]]
    assert offered == ["keygen", "init"]
    final = seen[-1]["coordinator"]
    assert final["round"] == 3 and final["stage"] == "finished"
    assert final["send"][0]["to"] == list(SITES)
    # hospital-c copied nothing after round 1: the final model is to be copied in first.
    c = seen[-1]["hospital-c"]
    assert [Path(p).name for p in c["fetch"]] == ["round-0003.model"]
    assert [a[1] for a in (n["argv"] for n in c["next"])] == ["prep", "evaluate"]


def test_status_reads_only(day, tmp_path):
    wf, *_ = day
    folder = tmp_path / "copy"
    shutil.copytree(wf.folder("hospital-b"), folder)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert run_cli("status", folder, "-q").code == 0
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
