"""Library-level tests of the four secure-aggregation steps on signed files."""

from __future__ import annotations

import numpy as np
import pytest

from fedxray import keys
from fedxray.artifact import build_artifact
from fedxray.errors import FedxrayError, ProtocolRefusal, VerificationError
from fedxray.modelfile import build_model_artifact, load_model_artifact
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.secagg.accumulate import CONTROL
from fedxray.secagg.pairwise import removal_streams
from fedxray.secagg.prg import add_streams
from fedxray.secagg.rounds import compute_closure_id
from fedxray.settings import make_settings
from fedxray.steps.abandon import abandon_round
from fedxray.steps.aggregate import aggregate
from fedxray.steps.mask import mask_update
from fedxray.steps.reveal import reveal
from fedxray.steps.unmask import unmask
from fedxray.verification import load_artifact
from tests.artifacts import resign

SITES = ("alpha", "bravo", "charlie", "delta")


class Fed:
    """A federation simulated in-process: keys, plan, round-1 model, per-party state folders."""

    def __init__(self, tmp_path, n_sites=4, **secagg):
        self.coord = keys.generate("coordinator")
        self.sites = {n: keys.generate(n) for n in SITES[:n_sites]}
        server = secagg.pop("server", {"optimizer": "fedavg", "lr": 1.0})
        settings = make_settings(
            {
                "secagg": {"frac_bits": 32, "clip": 1.0, "max_examples": 5000, **secagg},
                "server": server,
            }
        )
        self.plan = plan_from_bytes(
            create_plan("demo", self.coord, [k.public for k in self.sites.values()], settings)
        )
        rng = np.random.default_rng(0)
        layout = self.plan.model_layout()
        self.weights = {n: rng.normal(0, 0.1, s).astype(np.float32) for n, (s, _) in layout.items()}
        self.model = build_model_artifact(
            self.plan,
            round_number=1,
            weights=self.weights,
            parent=self.plan.digest,
            provenance={"round": 0},
            signer=self.coord,
        ).data
        self.dirs = {}
        for name in [*self.sites, "coordinator"]:
            d = tmp_path / name
            d.mkdir(parents=True)
            self.dirs[name] = d
        self.deltas, self.counts, self.updates = {}, {}, {}

    def update(self, site, round_number=1, seed=None, parent=None, count=None):
        rng = np.random.default_rng(seed if seed is not None else sum(site.encode()))
        layout = self.plan.model_layout()
        delta = {n: rng.normal(0, 0.01, s).astype(np.float32) for n, (s, _) in layout.items()}
        count = count or int(rng.integers(50, 5000))
        self.deltas[site], self.counts[site] = delta, count
        return build_artifact(
            "update",
            federation=self.plan.federation_id,
            round=round_number,
            sender=site,
            parent=parent or load_artifact(self.model, plan=self.plan, kind="model").digest,
            meta={
                "num_examples": count,
                "num_patients": count // 2,
                "epsilon": 1.5 + len(site) / 10,
                "delta": 1e-5,
                "dp": True,
                "unit": "patient",
            },
            tensors=delta,
            signer=self.sites[site],
        ).data

    def mask(self, site, update=None):
        if update is None:
            update = self.updates[site] = self.update(site)
        return mask_update(
            update,
            self.plan,
            self.sites[site],
            self.dirs[site],
        ).data

    def aggregate(self, masked, round_number=1):
        res = aggregate(
            masked, self.plan, self.coord, round_number, state_dir=self.dirs["coordinator"]
        )
        return res.sum, res.closure

    def reveal(self, site, closure):
        return reveal(closure, self.plan, self.sites[site], self.dirs[site]).data

    def unmask(self, total, reveals, model=None):
        return unmask(
            total,
            reveals,
            self.plan,
            self.coord,
            model or self.model,
            self.dirs["coordinator"] / "server.state",
        ).model

    def expected(self, survivors):
        n = sum(self.counts[s] for s in survivors)
        return {
            name: w
            + sum(self.counts[s] * self.deltas[s][name].astype(np.float64) for s in survivors) / n
            for name, w in self.weights.items()
        }


def test_round_with_one_dropout(tmp_path):
    fed = Fed(tmp_path)
    masked = {s: fed.mask(s) for s in ("alpha", "bravo", "charlie", "delta")}
    total, closure = fed.aggregate([masked[s] for s in ("alpha", "bravo", "charlie")])
    assert closure is not None
    c = load_artifact(closure, plan=fed.plan, kind="closure")
    assert c.header.meta["survivors"] == ["alpha", "bravo", "charlie"]
    assert c.header.meta["dropped"] == ["delta"]
    reveals = [fed.reveal(s, closure) for s in ("alpha", "bravo", "charlie")]
    nxt = fed.unmask(total, reveals)
    model = load_model_artifact(nxt, fed.plan, round_number=2)
    assert model.header.parent == load_artifact(fed.model, plan=fed.plan, kind="model").digest
    prov = model.header.meta["provenance"]
    assert prov["round"] == 1 and prov["sites"] == ["alpha", "bravo", "charlie"]
    assert prov["dropped"] == ["delta"]
    assert prov["epsilon"] == {"alpha": 2.0, "bravo": 2.0, "charlie": 2.2}
    expected = fed.expected(["alpha", "bravo", "charlie"])
    for name, t in model.tensors.items():
        # float32 storage dominates the error; the fixed-point error is ~2^-32 here.
        assert np.allclose(t, expected[name], rtol=0, atol=1e-6)
    # The masked file of the dropped site, arriving late, cannot join the closed round ...
    with pytest.raises(ProtocolRefusal, match="late"):
        fed.aggregate(list(masked.values()))
    # ... and the dropped site itself reveals nothing.
    with pytest.raises(ProtocolRefusal, match="dropped"):
        fed.reveal("delta", closure)
    # Re-issuing the same decision (e.g. after a crash) is allowed and reveals the same seeds.
    _, closure2 = fed.aggregate([masked[s] for s in ("alpha", "bravo", "charlie")])
    again = load_artifact(fed.reveal("alpha", closure2), plan=fed.plan, kind="reveal")
    first = load_artifact(reveals[0], plan=fed.plan, kind="reveal")
    assert again.header.meta == first.header.meta


def test_round_without_dropout_needs_one_trip(tmp_path):
    fed = Fed(tmp_path, n_sites=3)
    total, closure = fed.aggregate([fed.mask(s) for s in ("charlie", "alpha", "bravo")])
    assert closure is None
    model = load_model_artifact(fed.unmask(total, []), fed.plan, round_number=2)
    expected = fed.expected(["alpha", "bravo", "charlie"])
    for name, t in model.tensors.items():
        assert np.allclose(t, expected[name], rtol=0, atol=1e-6)
    with pytest.raises(FedxrayError, match="needs no reveals"):
        fed.unmask(total, [b"anything"])


def test_strict_round_and_late_site_stays_hidden(tmp_path):
    for strict in (False, True):
        fed = Fed(tmp_path / str(strict), strict=strict)
        masked = {s: fed.mask(s) for s in SITES}
        total, closure = fed.aggregate([masked[s] for s in SITES[:3]])
        reveals = [fed.reveal(s, closure) for s in SITES[:3]]
        nxt = load_model_artifact(fed.unmask(total, reveals), fed.plan, round_number=2)
        expected = fed.expected(list(SITES[:3]))
        assert all(np.allclose(t, expected[n], atol=1e-6) for n, t in nxt.tensors.items())
        # A curious coordinator holding the late file and all reveals tries to unmask "delta".
        late = load_artifact(masked["delta"], plan=fed.plan, kind="masked")
        flat = late.tensors[CONTROL].copy()
        for r in reveals:
            art = load_artifact(r, plan=fed.plan, kind="reveal")
            seed = bytes.fromhex(art.header.meta["pairs"]["delta"])
            # The survivor's pair mask with delta appears with the opposite sign in delta's file.
            add_streams(
                flat,
                [(s, -sign) for s, sign in removal_streams(art.header.sender, {"delta": seed})],
            )
        recovered = [int(x) for x in flat]
        if strict:
            assert recovered != [fed.counts["delta"], 1]  # the self mask still hides it
        else:
            assert recovered == [fed.counts["delta"], 1]  # the known weakness strict mode fixes


def test_strict_round_without_dropout_costs_a_second_trip(tmp_path):
    fed = Fed(tmp_path, n_sites=3, strict=True)
    total, closure = fed.aggregate([fed.mask(s) for s in SITES[:3]])
    assert (
        closure is not None
        and load_artifact(closure, plan=fed.plan, kind="closure").header.meta["dropped"] == []
    )
    reveals = [fed.reveal(s, closure) for s in SITES[:3]]
    with pytest.raises(FedxrayError, match="no reveal from charlie"):
        fed.unmask(total, reveals[:2])
    nxt = load_model_artifact(fed.unmask(total, reveals), fed.plan, round_number=2)
    expected = fed.expected(list(SITES[:3]))
    assert all(np.allclose(t, expected[n], atol=1e-6) for n, t in nxt.tensors.items())


def test_masking_twice(tmp_path):
    fed = Fed(tmp_path)
    upd = fed.update("alpha", seed=1)
    first = load_artifact(fed.mask("alpha", upd), plan=fed.plan, kind="masked")
    # The same update again gives the same masked values (a lost file can be remade) ...
    again = load_artifact(fed.mask("alpha", upd), plan=fed.plan, kind="masked")
    assert all(np.array_equal(first.tensors[n], again.tensors[n]) for n in first.tensors)
    # ... a different update for the same round is refused.
    with pytest.raises(ProtocolRefusal, match="already masked a different update for round 1"):
        fed.mask("alpha", fed.update("alpha", seed=2))
    # Another round is fine.
    fed.mask("alpha", fed.update("alpha", round_number=2, seed=3))


def test_aggregate_rejections(tmp_path):
    fed = Fed(tmp_path)
    masked = {s: fed.mask(s) for s in SITES[:3]}
    ok = list(masked.values())
    # Replayed into another round.
    with pytest.raises(VerificationError, match="round 1, expected round 2"):
        fed.aggregate(ok, round_number=2)
    # From another federation (same keys, new plan).
    other = Fed.__new__(Fed)
    other.__dict__.update(fed.__dict__)
    other.plan = plan_from_bytes(
        create_plan("other", fed.coord, [k.public for k in fed.sites.values()], fed.plan.settings)
    )
    foreign = mask_update(
        build_artifact(
            "update",
            federation=other.plan.federation_id,
            round=1,
            sender="delta",
            parent="0" * 64,
            meta={"num_examples": 10},
            tensors={n: np.zeros(s, np.float32) for n, (s, _) in fed.plan.model_layout().items()},
            signer=fed.sites["delta"],
        ).data,
        other.plan,
        fed.sites["delta"],
        tmp_path,
    ).data
    with pytest.raises(VerificationError, match="federation"):
        fed.aggregate([*ok, foreign])
    # Signed by someone who is not a member, or claiming to be a member.
    mallory = keys.generate("mallory")
    art = load_artifact(masked["alpha"], plan=fed.plan, kind="masked")
    outsider = resign(art, mallory, round=1)
    with pytest.raises(VerificationError, match="not a member"):
        fed.aggregate([*ok, outsider])
    impostor = keys.PrivateIdentity(
        "delta", mallory.signing_key, mallory.kx_private, mallory.secret
    )
    with pytest.raises(VerificationError, match="signature"):
        fed.aggregate([*ok, resign(art, impostor, round=1)])
    # The same site twice.
    with pytest.raises(VerificationError, match="second masked update from alpha"):
        fed.aggregate([*ok, fed.mask("alpha", fed.updates["alpha"])])
    # Too few sites.
    with pytest.raises(ProtocolRefusal, match="at least 3"):
        fed.aggregate(ok[:2])
    # Different parent model.
    odd = fed.mask("delta", fed.update("delta", parent="ab" * 32))
    with pytest.raises(VerificationError, match="different global model"):
        fed.aggregate([*ok, odd])
    # None of the refusals above consumed the round: the honest aggregate still works.
    _, closure = fed.aggregate(ok)
    assert closure is not None


def test_reveal_rejections(tmp_path):
    fed = Fed(tmp_path)
    masked = [fed.mask(s) for s in SITES[:3]]
    _, closure = fed.aggregate(masked)
    art = load_artifact(closure, plan=fed.plan, kind="closure")
    meta, parent = art.header.meta, art.header.parent

    def signed(signer=fed.coord, plan=fed.plan, round_number=1, **changes):
        """A closure with ``changes``, its id recomputed, signed by ``signer``."""
        m = {**meta, **changes}
        m["closure"] = compute_closure_id(
            plan, round_number, parent, m["survivors"], m["dropped"], m["strict"], m["inputs"]
        )
        return build_artifact(
            "closure",
            federation=plan.federation_id,
            round=round_number,
            sender=signer.name,
            parent=parent,
            meta=m,
            tensors={},
            signer=signer,
        ).data

    # A dropped site, or a site that has not masked in the closure's round, reveals nothing.
    with pytest.raises(ProtocolRefusal, match="as dropped"):
        fed.reveal("delta", closure)
    with pytest.raises(ProtocolRefusal, match="has not masked an update for round 7"):
        fed.reveal("alpha", signed(round_number=7))
    # Not signed by the coordinator (a site's closure; a forged coordinator signature).
    with pytest.raises(VerificationError, match="expected coordinator"):
        fed.reveal("alpha", signed(signer=fed.sites["bravo"]))
    impostor = keys.PrivateIdentity(
        "coordinator", fed.sites["bravo"].signing_key, fed.coord.kx_private, b"\0" * 32
    )
    with pytest.raises(VerificationError, match="signature"):
        fed.reveal("alpha", signed(signer=impostor))
    # Altered in transit.
    bad = bytearray(closure)
    bad[-1] ^= 1
    with pytest.raises(VerificationError):
        fed.reveal("alpha", bytes(bad))
    # Another federation (same keys, new plan).
    other = plan_from_bytes(
        create_plan("other", fed.coord, [k.public for k in fed.sites.values()], fed.plan.settings)
    )
    with pytest.raises(VerificationError, match="federation"):
        fed.reveal("alpha", signed(plan=other))
    # A site listed both as survivor and as dropped.
    with pytest.raises(ProtocolRefusal, match="both as survivor and as dropped"):
        fed.reveal("bravo", signed(dropped=["alpha", "delta"]))
    # An id that does not match the contents.
    tampered = build_artifact(
        "closure",
        federation=fed.plan.federation_id,
        round=1,
        sender="coordinator",
        parent=parent,
        meta={
            **meta,
            "dropped": ["delta"],
            "survivors": ["alpha", "bravo", "charlie"],
            "x": 1,
            "inputs": {**meta["inputs"], "bravo": "1" * 64},
        },
        tensors={},
        signer=fed.coord,
    ).data
    with pytest.raises(VerificationError, match="id does not match"):
        fed.reveal("alpha", tampered)
    # A closure that lists another masked update for this site.
    with pytest.raises(VerificationError, match="does not list the masked update"):
        fed.reveal("alpha", signed(inputs={**meta["inputs"], "alpha": "0" * 64}))
    # Nothing above was recorded: alpha reveals for the real closure, and again for a
    # re-issued file of the same decision ...
    first = load_artifact(fed.reveal("alpha", closure), plan=fed.plan, kind="reveal")
    again = load_artifact(fed.reveal("alpha", signed()), plan=fed.plan, kind="reveal")
    assert first.header.meta == again.header.meta and first.header.meta["pairs"].keys() == {"delta"}
    # ... but not for a different decision of the same round (here: charlie dropped instead).
    other_decision = signed(
        survivors=["alpha", "bravo", "delta"],
        dropped=["charlie"],
        inputs={**{k: v for k, v in meta["inputs"].items() if k != "charlie"}, "delta": "0" * 64},
    )
    with pytest.raises(ProtocolRefusal, match="different closure"):
        fed.reveal("alpha", other_decision)
    # bravo has not revealed yet, so it would answer it: only a comparison between sites (the
    # closure id) exposes such a coordinator; see docs/protocol.md.
    assert load_artifact(fed.reveal("bravo", other_decision), plan=fed.plan, kind="reveal")


def test_unmask_checks_inputs(tmp_path):
    fed = Fed(tmp_path)
    total, closure = fed.aggregate([fed.mask(s) for s in SITES[:3]])
    reveals = [fed.reveal(s, closure) for s in SITES[:3]]
    with pytest.raises(FedxrayError, match="no reveal from charlie"):
        fed.unmask(total, reveals[:2])
    # A reveal whose seeds were tampered with (re-signed by the site itself) is detected.
    art = load_artifact(reveals[0], plan=fed.plan, kind="reveal")
    pairs = {p: "00" * 32 for p in art.header.meta["pairs"]}
    wrong = resign(art, fed.sites["alpha"], meta={**art.header.meta, "pairs": pairs})
    with pytest.raises(VerificationError, match="do not remove the masks"):
        fed.unmask(total, [wrong, *reveals[1:]])
    # The sum belongs to the round-1 model, not to another one.
    other_model = build_model_artifact(
        fed.plan,
        round_number=1,
        weights=fed.weights,
        parent="ff" * 32,
        provenance={},
        signer=fed.coord,
    ).data
    with pytest.raises(VerificationError, match="another global model"):
        fed.unmask(total, reveals, model=other_model)
    assert load_model_artifact(fed.unmask(total, reveals), fed.plan, round_number=2)


def test_server_momentum_state_is_applied_once_per_round(tmp_path):
    fed = Fed(tmp_path, n_sites=3, server={"optimizer": "momentum", "lr": 1.0, "momentum": 0.5})
    total, _ = fed.aggregate([fed.mask(s) for s in SITES[:3]])
    first = load_model_artifact(fed.unmask(total, []), fed.plan, round_number=2)
    # Running the same round again gives the same model, not a second momentum step.
    again = load_model_artifact(fed.unmask(total, []), fed.plan, round_number=2)
    assert all(np.array_equal(first.tensors[n], again.tensors[n]) for n in first.tensors)
    expected = fed.expected(list(SITES[:3]))
    assert all(np.allclose(first.tensors[n], expected[n], atol=1e-6) for n in expected)


def test_mask_input_checks_and_clipping_warning(tmp_path):
    fed = Fed(tmp_path)
    with pytest.raises(FedxrayError, match="caps a site at 5000"):
        fed.mask("alpha", fed.update("alpha", count=5001))
    with pytest.raises(FedxrayError, match="not a site"):
        mask_update(fed.update("alpha"), fed.plan, keys.generate("zulu"), tmp_path)
    with pytest.raises(VerificationError, match="expected alpha"):
        mask_update(fed.update("bravo"), fed.plan, fed.sites["alpha"], tmp_path)
    upd = load_artifact(fed.update("bravo"), plan=fed.plan, kind="update")
    big = {n: np.asarray(t) * 0 + 3.0 for n, t in upd.tensors.items()}  # clip is 1.0
    data = resign(
        upd, fed.sites["bravo"], tensors={n: t.astype(np.float32) for n, t in big.items()}
    )
    notes = mask_update(data, fed.plan, fed.sites["bravo"], fed.dirs["bravo"]).warnings
    n = sum(t.size for t in big.values())
    assert notes == [f"{n} of {n} values were clipped to the plan's range ±1"]


def test_state_file_is_never_silently_reset(tmp_path):
    from fedxray.steps.protocol_state import open_state, state_path

    fed = Fed(tmp_path)
    fed.mask("alpha")
    path = state_path(fed.dirs["alpha"], "alpha", fed.plan.federation_id)
    assert path.stat().st_mode & 0o077 == 0
    path.write_text("{not json")
    with pytest.raises(FedxrayError, match="unreadable"):
        fed.mask("alpha", fed.updates["alpha"])
    with pytest.raises(FedxrayError, match="does not exist"):
        mask_update(fed.update("bravo"), fed.plan, fed.sites["bravo"], tmp_path / "nope")
    with (
        open_state(fed.dirs["bravo"], "bravo", fed.plan.federation_id),
        pytest.raises(FedxrayError, match="another fedxray process"),
    ):
        fed.mask("bravo")


def test_server_state_file(tmp_path):
    from fedxray.secagg.server import ServerConfig
    from fedxray.steps.server_state import load_server_state, save_server_state

    fed = Fed(tmp_path, n_sites=3)
    cfg = ServerConfig("momentum", lr=1.0, momentum=0.9)
    path = tmp_path / "server.state"
    before, after = {"m/w": np.zeros(3, np.float32)}, {"m/w": np.ones(3, np.float32)}
    with pytest.raises(FedxrayError, match="missing"):
        load_server_state(path, fed.plan, cfg, 5, "p5", fresh=False)
    assert load_server_state(path, fed.plan, cfg, 5, "p5", fresh=True) == {}
    save_server_state(path, fed.plan, cfg, 5, "p5", before, after)
    assert path.stat().st_mode & 0o077 == 0
    assert np.array_equal(
        load_server_state(path, fed.plan, cfg, 6, "p6", False)["m/w"], after["m/w"]
    )
    assert np.array_equal(
        load_server_state(path, fed.plan, cfg, 5, "p5", False)["m/w"], before["m/w"]
    )
    with pytest.raises(ProtocolRefusal, match="already includes round 5"):
        load_server_state(path, fed.plan, cfg, 4, "p4", False)
    with pytest.raises(ProtocolRefusal, match="already includes round 5"):
        load_server_state(path, fed.plan, cfg, 5, "another parent", False)
    with pytest.raises(FedxrayError, match="fedadam"):
        load_server_state(path, fed.plan, ServerConfig("fedadam"), 6, "p6", False)
    path.write_bytes(b"garbage")
    with pytest.raises(FedxrayError, match="unreadable"):
        load_server_state(path, fed.plan, cfg, 6, "p6", False)


def test_abandon_round(tmp_path):
    fed = Fed(tmp_path, n_sites=3)
    coord = fed.dirs["coordinator"]
    masked = [fed.mask(s) for s in SITES[:2]]
    # Too few sites delivered: the round cannot be aggregated, so it is abandoned.
    with pytest.raises(ProtocolRefusal, match="at least 3"):
        fed.aggregate(masked)
    other = build_model_artifact(
        fed.plan, round_number=1, weights=fed.weights, parent="ee" * 32, provenance={},
        signer=fed.coord,
    ).data  # fmt: skip
    nxt = abandon_round(fed.model, fed.plan, fed.coord, coord, reason="2 of 3").model
    model = load_model_artifact(nxt, fed.plan, round_number=2)
    prov = model.header.meta["provenance"]
    assert prov["abandoned"] and prov["reason"] == "2 of 3" and prov["sites"] == []
    assert all(np.array_equal(model.tensors[n], w) for n, w in fed.weights.items())
    # Once abandoned the round is closed for good, whatever arrives later.
    with pytest.raises(ProtocolRefusal, match="abandoned"):
        fed.aggregate([*masked, fed.mask("charlie")])
    # Abandoning again re-issues the same weights; another round-1 model is not this round's.
    abandon_round(fed.model, fed.plan, fed.coord, coord)
    with pytest.raises(VerificationError, match="another global model"):
        abandon_round(other, fed.plan, fed.coord, coord)
    with pytest.raises(VerificationError, match="not the coordinator"):
        abandon_round(fed.model, fed.plan, fed.sites["alpha"], coord)
