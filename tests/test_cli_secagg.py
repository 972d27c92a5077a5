"""Secure aggregation through the CLI: mask, aggregate, reveal, unmask, abandon, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedxray.artifact import build_artifact, parse_unverified
from fedxray.errors import EXIT_ERROR, EXIT_REFUSED, EXIT_VERIFY
from fedxray.keys import generate, load_private_key
from fedxray.plan import load_plan
from fedxray.verification import load_artifact
from tests.artifacts import resign
from tests.cli_helpers import run_cli

SITES = ("hosp-a", "hosp-b", "hosp-c")


class Fed:
    """Three sites (each in its own folder) and a coordinator, set up through the CLI."""

    def __init__(self, root, name="demo", min_sites=2, server_opt="fedavg"):
        self.root = root
        for s in SITES:
            (root / s).mkdir(exist_ok=True)
            if not (root / s / f"{s}.key").exists():
                assert run_cli("keygen", s, "-o", root / s, "-q").code == 0
        self.coord = root / f"coord-{name}"
        cards = [root / s / f"{s}.pub" for s in SITES]
        opts = {"--name": name, "-o": self.coord, "--image-size": 32, "--min-sites": min_sites}
        opts["--model"] = "tinycnn"
        opts["--server-opt"] = server_opt
        r = run_cli("init", *[x for kv in opts.items() for x in kv], "-q", *cards)
        assert r.code == 0, r.err
        self.plan_path = self.coord / f"{name}.plan"
        self.plan = load_plan(self.plan_path)
        self.ckey = self.coord / "coordinator.key"
        self.deltas: dict[tuple[str, int], dict] = {}
        self.counts: dict[tuple[str, int], int] = {}

    def key(self, site):
        return self.root / site / f"{site}.key"

    def model(self, r):
        return self.coord / f"round-{r:04d}.model"

    def update(self, site, r, seed=0, name=None):
        """A signed update as train-local would write it: small random deltas and the meta."""
        rng = np.random.default_rng([r, SITES.index(site), seed])
        deltas = {
            n: rng.normal(0, 0.01, s).astype(np.float32)
            for n, (s, _) in self.plan.model_layout().items()
        }
        count = int(rng.integers(20, 400))
        self.deltas[site, r], self.counts[site, r] = deltas, count
        data = build_artifact(
            "update",
            federation=self.plan.federation_id,
            round=r,
            sender=site,
            parent=parse_unverified(self.model(r).read_bytes())[0].digest,
            meta={
                "num_examples": count,
                "num_patients": count // 2,
                "epsilon": round(1.0 + SITES.index(site) / 4, 2),
                "delta": 1e-5,
                "dp": True,
                "unit": "patient",
            },
            tensors=deltas,
            signer=load_private_key(self.key(site)),
        ).data
        path = self.root / site / (name or f"{site}-round-{r:04d}.update")
        path.write_bytes(data)
        return path

    def cli(self, *args, key=None, **kw):
        return run_cli(*args, "--plan", self.plan_path, "--key", key or self.ckey, **kw)

    def mask(self, site, r, **kw):
        path = self.update(site, r, **kw)
        res = self.cli("mask", path, key=self.key(site))
        assert res.code == 0, res.err
        return path.with_suffix(".masked")

    def expected(self, r, survivors):
        """Round r's model plus the example-weighted mean of the survivors' deltas."""
        base = load_artifact(self.model(r).read_bytes(), plan=self.plan, kind="model").tensors
        n = sum(self.counts[s, r] for s in survivors)
        return {
            k: base[k] + sum(self.counts[s, r] * self.deltas[s, r][k] for s in survivors) / n
            for k in base
        }

    def check_model(self, r, survivors):
        res = run_cli("verify", self.model(r + 1), "--plan", self.plan_path, "--round", r + 1)
        assert res.code == 0, res.err
        got = load_artifact(self.model(r + 1).read_bytes(), plan=self.plan, kind="model")
        want = self.expected(r, survivors)
        assert all(np.allclose(got.tensors[k], want[k], rtol=0, atol=1e-6) for k in want)
        return got.header.meta["provenance"]


@pytest.fixture
def fed(tmp_path):
    return Fed(tmp_path)


def test_round_with_dropout_then_round_without(fed):
    masked = {s: fed.mask(s, 1) for s in SITES}
    # hosp-c's masked file does not arrive: two survivors (the plan opted into --min-sites 2).
    r = fed.cli("aggregate", masked["hosp-a"], masked["hosp-b"], "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["round"] == 1 and doc["dropped"] == ["hosp-c"]
    assert doc["survivors"] == doc["reveal_from"] == ["hosp-a", "hosp-b"]
    total, closure = fed.coord / "round-0001.sum", fed.coord / "round-0001.closure"
    assert doc["sum"] == str(total) and doc["closure"] == str(closure) and closure.exists()
    code = doc["closure_code"]
    assert code.replace("-", "") == doc["closure_id"][:32]
    # The late file cannot join the round that was closed without it.
    r = fed.cli("aggregate", *masked.values(), "-o", fed.root / "late.sum")
    assert r.code == EXIT_REFUSED and "late" in r.err and not (fed.root / "late.sum").exists()
    # Survivors reveal (and print the same closure id); the dropped site reveals nothing.
    reveals = []
    for s in ("hosp-a", "hosp-b"):
        r = fed.cli("reveal", closure, key=fed.key(s))
        assert r.code == 0, r.err
        assert f"closure id: {code}" in r.err
        reveals.append(fed.coord / f"{s}-round-0001.reveal")
        assert reveals[-1].exists()
    r = fed.cli("reveal", closure, "-o", fed.root / "c.reveal", key=fed.key("hosp-c"))
    assert r.code == EXIT_REFUSED and "dropped" in r.err and not (fed.root / "c.reveal").exists()
    # Unmask needs every survivor's reveal, then writes round 2's model beside the sum.
    r = fed.cli("unmask", total, reveals[0])
    assert r.code == EXIT_ERROR and "no reveal from hosp-b" in r.err
    r = fed.cli("unmask", total, *reveals, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["model"] == str(fed.model(2)) and doc["round"] == 2
    prov = fed.check_model(1, ["hosp-a", "hosp-b"])
    assert prov == doc["provenance"]
    assert prov["sites"] == ["hosp-a", "hosp-b"] and prov["dropped"] == ["hosp-c"]
    assert prov["epsilon"] == {"hosp-a": 1.0, "hosp-b": 1.25}

    # Round 2: everyone delivers, one trip, no closure, no reveal.
    masked2 = [fed.mask(s, 2) for s in SITES]
    r = fed.cli("aggregate", *masked2)
    assert r.code == 0, r.err
    assert "no second trip" in r.err and not (fed.coord / "round-0002.closure").exists()
    r = fed.cli("unmask", fed.coord / "round-0002.sum", reveals[0])
    assert r.code == EXIT_ERROR and "needs no reveals" in r.err
    r = fed.cli("unmask", fed.coord / "round-0002.sum")
    assert r.code == 0, r.err
    for s, eps in zip(SITES, ("1.000", "1.250", "1.500"), strict=True):
        assert s in r.err and eps in r.err  # the provenance table
    assert fed.check_model(2, list(SITES))["dropped"] == []
    # A masked file replayed from round 1 into round 2.
    r = fed.cli("aggregate", masked["hosp-c"], *masked2[:2], "-o", fed.root / "x.sum")
    assert r.code == EXIT_VERIFY and "different rounds" in r.err
    assert f"round 1: {masked['hosp-c']}" in r.err  # the path as given
    r = fed.cli("aggregate", masked["hosp-c"], *masked2[:2], "--round", "2", "-o", "-")
    assert r.code == EXIT_VERIFY and "round 1, expected round 2" in r.err and r.out_bytes == b""


def test_mask_once_per_round_and_outputs(fed):
    upd = fed.update("hosp-a", 1)
    out = fed.root / "hosp-a" / "hosp-a-round-0001.masked"
    out.write_bytes(b"old")
    # The output is checked before any work: nothing was recorded, so a new update may go.
    r = fed.cli("mask", upd, key=fed.key("hosp-a"))
    assert r.code == EXIT_ERROR and "exists" in r.err and out.read_bytes() == b"old"
    assert not list((fed.root / "hosp-a").glob("*.secagg.json"))
    upd = fed.update("hosp-a", 1, seed=1)
    r = fed.cli("mask", upd, "--force", "--json", key=fed.key("hosp-a"))
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["masked"] == str(out) and doc["round"] == 1 and doc["warnings"] == []
    first = load_artifact(out.read_bytes(), plan=fed.plan, kind="masked")
    # The same update again, to standard output: the same masked values.
    r = fed.cli("mask", upd, "-o", "-", key=fed.key("hosp-a"))
    assert r.code == 0, r.err
    again = load_artifact(r.out_bytes, plan=fed.plan, kind="masked")
    assert all(np.array_equal(first.tensors[k], again.tensors[k]) for k in first.tensors)
    # A second, different update for the same round is refused and writes nothing.
    other = fed.update("hosp-a", 1, seed=2, name="other.update")
    r = fed.cli("mask", other, key=fed.key("hosp-a"))
    assert r.code == EXIT_REFUSED and "already masked a different update for round 1" in r.err
    assert not other.with_suffix(".masked").exists()
    # Values beyond the plan's clip range are masked with a warning.
    big = fed.root / "hosp-b" / "big.update"
    art = load_artifact(fed.update("hosp-b", 1).read_bytes(), plan=fed.plan, kind="update")
    nines = {k: np.full(v.shape, 9.0, np.float32) for k, v in art.tensors.items()}
    big.write_bytes(resign(art, load_private_key(fed.key("hosp-b")), tensors=nines))
    r = fed.cli("mask", big, key=fed.key("hosp-b"))
    assert r.code == 0 and "warning:" in r.err and "clipped to the plan's range ±4" in r.err
    # Another site's update, or a key that is not the plan's.
    r = fed.cli("mask", fed.update("hosp-c", 1), "-o", fed.root / "x", key=fed.key("hosp-b"))
    assert r.code == EXIT_VERIFY and "expected hosp-b" in r.err
    r = fed.cli("mask", upd, "-o", fed.root / "y")  # the coordinator's key
    assert r.code == EXIT_ERROR and "not a site" in r.err


def test_aggregate_rejections(fed, tmp_path):
    masked = {s: fed.mask(s, 1) for s in SITES}
    ok = list(masked.values())
    sink = ("-o", tmp_path / "x.sum", "--closure", tmp_path / "x.closure")
    # A masked file from another federation (same site keys, new plan).
    other = Fed(fed.root, name="other")
    foreign = other.mask("hosp-c", 1, name="foreign.update")
    r = fed.cli("aggregate", masked["hosp-a"], masked["hosp-b"], foreign, *sink)
    assert r.code == EXIT_VERIFY and "federation" in r.err
    # Signed by someone who is not a member.
    mallory = generate("mallory")
    art = load_artifact(masked["hosp-a"].read_bytes(), plan=fed.plan, kind="masked")
    fake = tmp_path / "mallory.masked"
    fake.write_bytes(resign(art, mallory, round=1))
    r = fed.cli("aggregate", *ok[:2], fake, *sink)
    assert r.code == EXIT_VERIFY and "not a member" in r.err
    # The same sender twice (a copy under another name).
    dup = tmp_path / "copy.masked"
    dup.write_bytes(masked["hosp-a"].read_bytes())
    r = fed.cli("aggregate", *ok[:2], dup, *sink)
    assert r.code == EXIT_VERIFY and "second masked update from hosp-a" in r.err
    # A file that is not there.
    r = fed.cli("aggregate", *ok[:2], tmp_path / "missing.masked", *sink)
    assert r.code == EXIT_ERROR and "masked update not found" in r.err
    # Fewer than the plan's minimum (2 here).
    r = fed.cli("aggregate", masked["hosp-a"], *sink)
    assert r.code == EXIT_REFUSED and "at least 2" in r.err
    assert not any(tmp_path.glob("x.*"))
    # None of that consumed the round: the honest aggregate works, from stdin too.
    r = fed.cli("aggregate", "-", *ok[1:], "--json", stdin=masked["hosp-a"].read_bytes())
    assert r.code == 0, r.err
    assert json.loads(r.out)["survivors"] == list(SITES)


def test_reveal_needs_a_valid_closure(fed, tmp_path):
    masked = [fed.mask(s, 1) for s in SITES[:2]]
    assert fed.cli("aggregate", *masked).code == 0
    closure = fed.coord / "round-0001.closure"
    out = ("-o", tmp_path / "x.reveal")
    key = fed.key("hosp-a")
    # Altered in transit.
    bad = bytearray(closure.read_bytes())
    bad[len(bad) // 2] ^= 1
    (tmp_path / "bad.closure").write_bytes(bytes(bad))
    r = fed.cli("reveal", tmp_path / "bad.closure", *out, key=key)
    assert r.code == EXIT_VERIFY
    # Signed by a site instead of the coordinator.
    art = load_artifact(closure.read_bytes(), plan=fed.plan, kind="closure")
    forged = resign(art, load_private_key(fed.key("hosp-b")))
    (tmp_path / "forged.closure").write_bytes(forged)
    r = fed.cli("reveal", tmp_path / "forged.closure", *out, key=key)
    assert r.code == EXIT_VERIFY and "expected coordinator" in r.err
    # Not a closure at all (the sum), and no closure from standard input.
    r = fed.cli("reveal", fed.coord / "round-0001.sum", *out, key=key)
    assert r.code == EXIT_VERIFY and "expected 'closure'" in r.err
    r = fed.cli("reveal", "-", *out, key=key, stdin=b"")
    assert r.code == EXIT_VERIFY
    # A site that did not mask in that round (hosp-c's update never existed) reveals nothing.
    r = fed.cli("reveal", closure, *out, key=fed.key("hosp-c"))
    assert r.code == EXIT_REFUSED
    assert not (tmp_path / "x.reveal").exists()
    # The genuine closure is still answered.
    r = fed.cli("reveal", closure, *out, "--json", key=key)
    assert r.code == 0, r.err
    assert json.loads(r.out)["dropped"] == ["hosp-c"] and (tmp_path / "x.reveal").exists()


def test_abandon_a_round_whose_reveal_never_comes(fed):
    masked = [fed.mask(s, 1) for s in SITES[:2]]
    assert fed.cli("aggregate", *masked).code == 0
    closure = fed.coord / "round-0001.closure"
    assert fed.cli("reveal", closure, key=fed.key("hosp-a")).code == 0
    # hosp-b never answers: the coordinator gives up round 1 and re-issues its weights.
    r = fed.cli("abandon", fed.model(1), "--reason", "hosp-b unreachable", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {
        "model": str(fed.model(2)),
        "abandoned_round": 1,
        "round": 2,
        "reason": "hosp-b unreachable",
    }
    assert run_cli("verify", fed.model(2), "--plan", fed.plan_path, "--round", "2").code == 0
    old = load_artifact(fed.model(1).read_bytes(), plan=fed.plan, kind="model")
    new = load_artifact(fed.model(2).read_bytes(), plan=fed.plan, kind="model")
    assert new.header.parent == old.digest and new.header.meta["provenance"]["abandoned"]
    assert all(np.array_equal(old.tensors[k], new.tensors[k]) for k in old.tensors)
    # The abandoned round can be neither unmasked (even when the missing reveal turns up
    # late) nor aggregated again.
    assert fed.cli("reveal", closure, key=fed.key("hosp-b")).code == 0
    reveals = [fed.coord / f"{s}-round-0001.reveal" for s in SITES[:2]]
    r = fed.cli("unmask", fed.coord / "round-0001.sum", *reveals, "-o", fed.root / "n.model")
    assert r.code == EXIT_REFUSED and "abandoned" in r.err
    r = fed.cli("aggregate", *masked, "--force")
    assert r.code == EXIT_REFUSED and "abandoned" in r.err
    # Round 2 runs from the re-issued model, with fresh masks; it cannot be abandoned once
    # unmasked.
    assert fed.cli("aggregate", *[fed.mask(s, 2) for s in SITES]).code == 0
    assert fed.cli("unmask", fed.coord / "round-0002.sum").code == 0
    fed.check_model(2, list(SITES))
    r = fed.cli("abandon", fed.model(2), "-o", fed.root / "m.model")
    assert r.code == EXIT_REFUSED and "already unmasked" in r.err


def test_server_state_beside_the_key_and_fresh_start_flag(tmp_path):
    fed = Fed(tmp_path, min_sites=3, server_opt="momentum")
    assert fed.cli("aggregate", *[fed.mask(s, 1) for s in SITES]).code == 0
    assert fed.cli("unmask", fed.coord / "round-0001.sum").code == 0
    (state,) = fed.coord.glob("coordinator.*.server.safetensors")
    assert fed.check_model(1, list(SITES))["server"]["optimizer"] == "momentum"
    state.unlink()  # lost between rounds: the momentum would silently restart
    assert fed.cli("aggregate", *[fed.mask(s, 2) for s in SITES]).code == 0
    r = fed.cli("unmask", fed.coord / "round-0002.sum")
    assert r.code == EXIT_ERROR and "is missing" in r.err and "--fresh-server-state" in r.err
    assert not fed.model(3).exists()
    r = fed.cli("unmask", fed.coord / "round-0002.sum", "--fresh-server-state")
    assert r.code == 0, r.err
    assert state.exists() and fed.check_model(2, list(SITES))["round"] == 2
