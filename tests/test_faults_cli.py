"""Faults at the command line: impossible options, and failures that must leave nothing behind.

The fault suite of issue 13, case by case (each test checks the exit code, one error line
and a hint, no traceback, nothing on stdout or one JSON error document with --json, and no
file left behind):

Garbage treated as radiographs
- plausibility checks, junk refused and real images kept: test_plausibility.py,
  test_faults_prep.py (symlink loops, corrupt JPEG 2000)
- train-local warns on a small shard: test_faults_files.py::test_train_local_warns_on_a_small_shard
- predict's notice and out-of-distribution flag: test_faults_files.py::
  test_predict_says_it_is_no_diagnosis, test_predict_flags_noise_and_not_phantoms
"internal error ... please report" for foreseeable conditions
- a full disk (train-local, aggregate and every other output): test_faults_io.py
- --device cuda with no GPU, --device tpu: test_a_device_this_machine_lacks_is_refused_first
- a self-referencing symlink in a prep input: test_faults_prep.py::test_symlink_loop_*
- init --lr nan / inf, --clip-norm nan, --server-lr nan, and every other float option:
  test_non_finite_floats_are_refused, test_every_float_option_is_covered
Nothing left behind
- a failed init leaves no coordinator.key / .pub: test_failed_init_leaves_nothing,
  test_failed_init_keeps_what_was_there
- a failed simulate (--rounds 0, --sites 1, empty --data) leaves no run folder:
  test_failed_simulate_leaves_no_run_folder (a full disk mid-run: test_faults_io.py)
Diagnostics that mislead
- evaluate's size hint names a flag prep takes: test_cli_evaluate.py::test_shard_must_fit_the_model
- a corrupt JPEG 2000 fragment is corrupt: test_faults_prep.py
- inspect on a healthy .ledger or .shard shows it: test_faults_files.py::test_inspect_*
- messages name the path as given: test_messages_name_the_path_as_given
  (and test_faults_io.py for outputs)
- --json errors are one JSON document on stdout; verify --json on failure:
  test_json_errors_are_one_document, test_verify_json_failure_says_ok_false
- a truncated .key gets no ".key" hint: test_truncated_key_is_called_damaged
- standard output closed early: test_faults_io.py::test_broken_pipe_stops_quietly_with_141
Inputs a user will naturally give
- labels CSV paths, labels in sub-folders, duplicates in test sets: test_faults_prep.py,
  test_cli_evaluate.py (reads of dropped duplicates)
- loaded plans are re-checked: test_an_unsound_signed_plan_is_refused_on_load (CLI),
  test_fuzz_artifacts.py (property-based, with the artifact parser)
"""

from __future__ import annotations

import inspect
import json
import os
import typing

import pytest
import torch

from fedxray.artifact import build_artifact
from fedxray.cli.main import app
from fedxray.errors import EXIT_ERROR, EXIT_USAGE, EXIT_VERIFY
from fedxray.keys import load_private_key
from fedxray.plan import load_plan
from tests.cli_helpers import assert_clean_error, run_cli
from tests.conftest import REPO
from tests.faultfed import files_under

NO_GPU = not torch.cuda.is_available()


def _clean_json_error(r, code: int, *words: str) -> dict:
    """With --json: the error line on stderr, and one JSON document on stdout."""
    lines = r.err.strip().splitlines()
    assert r.code == code and lines[0].startswith("fedxray: error: "), r.err
    assert "Traceback" not in r.err
    doc = json.loads(r.out)
    assert doc["ok"] is False and doc["exit_code"] == code
    assert doc["error"] == lines[0].removeprefix("fedxray: error: ")
    for w in words:
        assert w in r.err
    return doc


# ---- devices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "words"),
    [
        ("tpu", ("unknown device 'tpu'", "cpu, cuda, cuda:N or mps")),
        pytest.param("cuda", ("device cuda is not available", "--device cpu"),
                      marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
        pytest.param("cuda:0", ("device cuda:0 is not available",),
                      marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["train-local", "predict", "evaluate", "simulate"])
def test_a_device_this_machine_lacks_is_refused_first(fault_fed, tmp_path, device, words,
                                                      command):  # fmt: skip
    f = fault_fed
    args = {
        "train-local": ("train-local", f.model(2), "--data", f.shard("hosp-a"), "--plan", f.plan,
                        "--key", f.key("hosp-a"), "-o", tmp_path / "a.update",
                        "--ledger", tmp_path / "a.ledger"),
        "predict": ("predict", f.model(2), REPO / "sample_data" / "test", "--plan", f.plan,
                    "-o", tmp_path / "p.csv"),
        "evaluate": ("evaluate", f.model(2), f.shard("hosp-b"), "--plan", f.plan),
        "simulate": ("simulate", "-o", tmp_path / "run"),
    }[command]  # fmt: skip
    r = run_cli(*args, "--device", device)
    assert_clean_error(r, EXIT_ERROR, *words)
    assert files_under(tmp_path) == set()  # refused before any work: no ledger, no output


# ---- float options -------------------------------------------------------------------------

FLOATS = {  # every float option of the command line, with a command that reaches it
    ("init", "--lr"), ("init", "--epsilon"), ("init", "--delta"), ("init", "--clip-norm"),
    ("init", "--server-lr"), ("init", "--bias-lr"), ("simulate", "--lr"), ("simulate", "--epsilon"),
    ("simulate", "--skew"), ("train-local", "--max-epsilon"), ("predict", "--min-confidence"),
    ("prep", "--holdout"), ("privacy", "--set-budget"), ("privacy", "--budget-delta"),
}  # fmt: skip


def _takes_float(annotation) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation is float or float in typing.get_args(annotation)


def test_every_float_option_is_covered():
    found = {
        (info.name, "--" + p.name.replace("_", "-"))
        for info in app.registered_commands
        for p in inspect.signature(info.callback).parameters.values()
        if _takes_float(p.annotation)
    }
    assert found == FLOATS, "add the new float option to FLOATS"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("command", "option"), sorted(FLOATS))
def test_non_finite_floats_are_refused(fault_fed, tmp_path, command, option, value):
    f = fault_fed
    args = {
        "init": ("init", "--name", "x", "-o", tmp_path / "coord", f.root / "hosp-a.pub",
                 f.root / "hosp-b.pub"),
        "simulate": ("simulate", "-o", tmp_path / "run"),
        "train-local": ("train-local", f.model(2), "--data", f.shard("hosp-a"), "--plan", f.plan,
                        "--key", f.key("hosp-a"), "-o", tmp_path / "a.update"),
        "predict": ("predict", f.model(2), REPO / "sample_data" / "test", "--plan", f.plan),
        "prep": ("prep", REPO / "sample_data" / "hospital-c", "-o", tmp_path / "c.shard",
                 "--plan", f.plan, "--key", f.key("hosp-a")),
        "privacy": ("privacy", tmp_path / "site.ledger"),
    }[command]  # fmt: skip
    r = run_cli(*args, f"{option}={value}")
    assert_clean_error(r, EXIT_ERROR, f"{option} must be a finite number, got {value}")
    assert files_under(tmp_path) == set()


# ---- init and simulate leave nothing behind ------------------------------------------------


def _init(fed, out, *extra, cards=None):
    cards = cards if cards is not None else (fed.root / "hosp-a.pub", fed.root / "hosp-b.pub")
    return run_cli("init", "--name", "demo", "-o", out, "--min-sites", "2", "--image-size", "16",
                   "--model", "tinycnn", *extra, *cards)  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--min-sites", "5"), "min-sites is 5"),
        (("--epsilon", "0"), "epsilon must be in"),
        (("--model", "nosuch"), "unknown model"),
        (("--init", "missing.safetensors"), "not found"),
        (("--server-opt", "nosuch"), "unknown server optimiser"),
        (("--classes", "a,a"), "distinct class names"),
    ],
)
def test_failed_init_leaves_nothing(fault_fed, tmp_path, extra, words):
    out = tmp_path / "new" / "coord"
    assert_clean_error(_init(fault_fed, out, *extra), EXIT_ERROR, words)
    assert not (tmp_path / "new").exists()  # not even the folders it would have made
    bad = tmp_path / "bad.pub"
    bad.write_bytes(b"junk")
    r = _init(fault_fed, out, cards=(fault_fed.root / "hosp-a.pub", bad))
    assert r.code == EXIT_VERIFY and not (tmp_path / "new").exists()
    r = _init(fault_fed, out, cards=[fault_fed.root / "hosp-a.pub"] * 2)
    assert_clean_error(r, EXIT_ERROR, "same name: hosp-a")
    assert not (tmp_path / "new").exists()


def test_failed_init_keeps_what_was_there(fault_fed, tmp_path):
    out = tmp_path / "coord"
    assert _init(fault_fed, out, "-q").code == 0
    key = (out / "coordinator.key").read_bytes()
    for name in ("demo.plan", "round-0001.model", "coordinator.pub"):
        (out / name).unlink()
    (out / "notes.txt").write_text("mine")
    assert_clean_error(_init(fault_fed, out, "--lr", "-1"), EXIT_ERROR, "learning rate")
    assert sorted(p.name for p in out.iterdir()) == ["coordinator.key", "notes.txt"]
    assert (out / "coordinator.key").read_bytes() == key  # an existing key is never touched
    assert _init(fault_fed, out, "-q").code == 0  # and the rerun uses it
    assert (
        load_private_key(out / "coordinator.key").public == load_plan(out / "demo.plan").coordinator
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--rounds", "0"), "rounds and local-epochs must be at least 1"),
        (("--data", "{empty}", "--sites", "1"), "at least 2 sites"),
        (("--data", "{empty}"), "no files found in"),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_failed_simulate_leaves_no_run_folder(tmp_path, extra, words, existing):
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    if existing:  # an empty folder made for the run stays, empty
        run.mkdir()
    args = [str(a).replace("{empty}", str(tmp_path / "empty")) for a in extra]
    assert_clean_error(run_cli("simulate", "-o", run, *args), EXIT_ERROR, words)
    assert run.exists() == existing and files_under(tmp_path) == {tmp_path / "empty"} | (
        {run} if existing else set()
    )


# ---- diagnostics ---------------------------------------------------------------------------


def test_json_errors_are_one_document(fault_fed, tmp_path):
    doc = _clean_json_error(run_cli("inspect", tmp_path / "nope.model", "--json"), EXIT_ERROR,
                            "not found")  # fmt: skip
    assert doc["hint"] is None
    r = run_cli("init", "--name", "x", "-o", tmp_path / "c", "--lr", "nan", "--json",
                fault_fed.root / "hosp-a.pub")  # fmt: skip
    _clean_json_error(r, EXIT_ERROR, "--lr must be a finite number")
    r = run_cli("verify", "--bogus", "--json")  # a usage error: click's message, exit 2
    assert r.code == EXIT_USAGE and json.loads(r.out)["exit_code"] == EXIT_USAGE
    r = run_cli("verify", fault_fed.model(2), "--plan", fault_fed.plan, "--round", "1", "--json")
    _clean_json_error(r, EXIT_VERIFY, "expected round 1")


def test_verify_json_failure_says_ok_false(fault_fed, tmp_path):
    ok = json.loads(run_cli("verify", fault_fed.model(2), "--plan", fault_fed.plan, "--json").out)
    assert ok["ok"] is True
    bad = tmp_path / "round-0002.model"
    data = bytearray(fault_fed.model(2).read_bytes())
    data[-3] ^= 1
    bad.write_bytes(bytes(data))
    r = run_cli("verify", bad, "--plan", fault_fed.plan, "--json")
    doc = _clean_json_error(r, EXIT_VERIFY, "checksum")
    assert set(doc) == {"ok", "error", "hint", "exit_code"}


def test_truncated_key_is_called_damaged(fault_fed, tmp_path):
    key = tmp_path / "hosp-a.key"
    key.write_bytes(fault_fed.key("hosp-a").read_bytes()[:60])
    os.chmod(key, 0o600)
    for args in (("verify", fault_fed.plan, "--key", key), ("inspect", key)):
        r = run_cli(*args)
        assert r.code in (EXIT_ERROR, EXIT_VERIFY)
        assert_clean_error(r, r.code, f"{key} is a damaged or truncated private key file",
                           "restore it from its backup")  # fmt: skip
        assert "end in .key" not in r.err
    card = tmp_path / "card.key"  # a site card given as the key
    card.write_bytes((fault_fed.root / "hosp-a.pub").read_bytes())
    os.chmod(card, 0o600)
    r = run_cli("verify", fault_fed.plan, "--key", card)
    assert_clean_error(r, EXIT_ERROR, "not a private key file", "site cards (.pub) cannot sign")


def test_messages_name_the_path_as_given(fault_fed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = tmp_path / "inbox" / "round 2"
    sub.mkdir(parents=True)
    data = bytearray(fault_fed.model(2).read_bytes())
    data[100] ^= 1
    (sub / "round-0002.model").write_bytes(bytes(data))
    given = os.path.join("inbox", "round 2", "round-0002.model")
    r = run_cli("verify", given, "--plan", fault_fed.plan)
    assert_clean_error(r, EXIT_VERIFY, given)
    r = run_cli("train-local", given, "--data", fault_fed.shard("hosp-a"), "--plan",
                fault_fed.plan, "--key", fault_fed.key("hosp-a"))  # fmt: skip
    assert r.code == EXIT_VERIFY and given in r.err
    r = run_cli("inspect", os.path.join("inbox", "missing.plan"))
    assert_clean_error(r, EXIT_ERROR, os.path.join("inbox", "missing.plan"))


def _forged_plan(fed, sites) -> bytes:
    plan = load_plan(fed.plan)
    meta = {"name": "demo", "coordinator": plan.coordinator.to_dict(), "sites": sites,
            "settings": plan.settings.to_dict()}  # fmt: skip
    coord = load_private_key(fed.coord / "coordinator.key")
    return build_artifact("plan", federation=plan.federation_id, round=0, sender=coord.name,
                          parent="", meta=meta, tensors={}, signer=coord).data  # fmt: skip


def test_an_unsound_signed_plan_is_refused_on_load(fault_fed, tmp_path):
    cards = [s.to_dict() for s in load_plan(fault_fed.plan).sites]
    for sites, words in (
        ([cards[0], cards[0], cards[1]], "two site cards have the same name: hosp-a"),
        ([*cards, load_plan(fault_fed.plan).coordinator.to_dict()], "named like the coordinator"),
    ):
        bad = tmp_path / "demo.plan"
        bad.write_bytes(_forged_plan(fault_fed, sites))
        assert_clean_error(run_cli("verify", bad), EXIT_VERIFY, f"{bad} is not a sound plan",
                           words)  # fmt: skip
        r = run_cli("train-local", fault_fed.model(2), "--data", fault_fed.shard("hosp-a"),
                    "--plan", bad, "--key", fault_fed.key("hosp-a"),
                    "-o", tmp_path / "u")  # fmt: skip
        assert_clean_error(r, EXIT_VERIFY, words)
        assert not (tmp_path / "u").exists()
