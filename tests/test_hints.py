"""The `next:` hints that commands print run as printed, with no FEDXRAY_PLAN/FEDXRAY_KEY in
the environment; an interrupted train-local says what was spent, its rerun says it resumed;
the plan's last round ends with the final model, never a "round N + 1" that does not exist.

One small federation (3 sites, 2 rounds, hosp-c drops out of round 2), run from the
coordinator's folder as a technician would: every hint is split as a shell would and run.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

import fedxray.steps.train_local as train_step
from tests.cli_helpers import SITES, make_federation, run_cli
from tests.conftest import REPO

SAMPLES = ("hospital-a", "hospital-b", "hospital-c")


def hints(text: str) -> list[list[str]]:
    """Every printed `next...: fedxray ...` line, as argv (without the leading fedxray)."""
    found = re.findall(r"^next[^:]*: (fedxray .*)$", text, re.M)
    return [shlex.split(line)[1:] for line in found]


def run_hint(text: str) -> str:
    (argv,) = hints(text)
    r = run_cli(*argv)
    assert r.code == 0, (argv, r.err)
    return r.err


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    monkeypatch.delenv("FEDXRAY_PLAN", raising=False)
    monkeypatch.delenv("FEDXRAY_KEY", raising=False)


def interrupt_after_first_epoch(monkeypatch):
    """Ctrl-C as soon as train-local reports its first finished epoch."""
    real = train_step.train_round

    def train_round(*args, progress=None, **kwargs):
        def on_progress(done, total):
            if progress is not None:
                progress(done, total)
            if done and done * 2 >= total:  # 2 epochs a round: the first is done
                raise KeyboardInterrupt

        return real(*args, progress=on_progress, **kwargs)

    monkeypatch.setattr(train_step, "train_round", train_round)


def test_hints_run_as_printed_through_a_dropout_round(tmp_path, monkeypatch):
    make_federation(tmp_path, "hinted", "--model", "tinycnn", "--rounds", "2",
                    "--local-epochs", "2", "--image-size", "16", "--min-sites", "2")  # fmt: skip
    coord = tmp_path / "coordinator"
    plan, ckey = coord / "hinted.plan", tmp_path / "coordinator" / "coordinator.key"
    for site, sample in zip(SITES, SAMPLES, strict=True):
        key = tmp_path / f"{site}.key"
        r = run_cli("prep", REPO / "sample_data" / sample, "-o", tmp_path / f"{site}.shard",
                    "--workers", "1", "--plan", plan, "--key", key, "-q")  # fmt: skip
        assert r.code == 0, r.err
    monkeypatch.chdir(coord)  # the coordinator's folder, where the sites' files arrive

    def train(site: str, r: int) -> str:
        update = coord / f"{site}-round-{r:04d}.update"
        res = run_cli("train-local", coord / f"round-{r:04d}.model", "--data",
                      tmp_path / f"{site}.shard", "--plan", plan, "--key",
                      tmp_path / f"{site}.key", "-o", update)  # fmt: skip
        assert res.code == 0, res.err
        return res.err

    # Round 1, hosp-a: interrupted after its first epoch; the rerun resumes and says so.
    with monkeypatch.context() as m:
        interrupt_after_first_epoch(m)
        stopped = run_cli("train-local", coord / "round-0001.model", "--data",
                          tmp_path / "hosp-a.shard", "--plan", plan, "--key",
                          tmp_path / "hosp-a.key")  # fmt: skip
    assert stopped.code == 130, stopped.err
    spent = re.search(r"has spent epsilon (\d+\.\d{3}) of 8 at this site", stopped.err)
    assert spent and float(spent.group(1)) > 0, stopped.err
    assert "run the same command again to resume" in stopped.err
    assert not (coord / "hosp-a-round-0001.update").exists()
    # status at the site (its folder: key, shard, ledger; the model on the "stick") agrees.
    st = run_cli("status", tmp_path, "--plan", plan, "--key", tmp_path / "hosp-a.key",
                 "--inbox", coord, "--json")  # fmt: skip
    assert st.code == 0, st.err
    doc = json.loads(st.out)
    assert doc["stage"] == "train" and doc["round"] == 1, doc
    assert any("interrupted" in n and "resumes" in n for n in doc["notes"]), doc["notes"]
    assert [Path(f).name for f in doc["fetch"]] == ["round-0001.model"]
    assert doc["next"][0]["argv"][1] == "train-local" and "--key" in doc["next"][0]["argv"]
    assert doc["privacy"]["epsilon"] == pytest.approx(float(spent.group(1)), abs=1e-3)
    resumed = train("hosp-a", 1)
    assert "resumed round 1: went on from epoch 2" in resumed, resumed
    assert "nothing was counted twice" in resumed

    # Every site's train-local hint (mask) and the coordinator's aggregate hint (unmask).
    outputs = {"hosp-a": resumed, **{s: train(s, 1) for s in SITES[1:]}}
    for site in SITES:
        assert f"--key {tmp_path / f'{site}.key'}" in outputs[site]
        run_hint(outputs[site])  # writes SITE-round-0001.masked beside the update
    agg = run_cli("aggregate", *(f"{s}-round-0001.masked" for s in SITES), "--plan", plan,
                  "--key", ckey)  # fmt: skip
    assert agg.code == 0, agg.err
    unmasked = run_hint(agg.err)
    assert "round 2's global model; send it to every site" in unmasked
    assert (coord / "round-0002.model").is_file()

    # Round 2: hosp-c drops out; the hint after the closure names the survivors' reveals.
    for site in SITES[:2]:
        run_hint(train(site, 2))
    agg = run_cli("aggregate", *(f"{s}-round-0002.masked" for s in SITES[:2]), "--plan", plan,
                  "--key", ckey)  # fmt: skip
    assert agg.code == 0 and "round-0002.closure" in agg.err, agg.err
    for site in SITES[:2]:
        r = run_cli("reveal", "round-0002.closure", "--plan", plan, "--key",
                    tmp_path / f"{site}.key", "-q")  # fmt: skip
        assert r.code == 0, r.err
    final = run_hint(agg.err)
    assert "the federation's final model" in final and "round 3" not in final, final
    assert (coord / "round-0003.model").is_file()


def test_abandoning_the_last_round_gives_the_final_model(tmp_path):
    make_federation(tmp_path, "short", "--model", "tinycnn", "--rounds", "1",
                    "--image-size", "16", "--min-sites", "2")  # fmt: skip
    coord = tmp_path / "coordinator"
    r = run_cli("abandon", coord / "round-0001.model", "--plan", coord / "short.plan", "--key",
                coord / "coordinator.key")  # fmt: skip
    assert r.code == 0, r.err
    assert "final model" in r.err and "round 2's" not in r.err, r.err
    shutil.rmtree(coord)
