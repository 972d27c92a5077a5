"""Property tests of the secure-aggregation math: encoding, masks, sums, capacity, server step."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from fedxray import keys
from fedxray.errors import FedxrayError
from fedxray.secagg import pairwise, prg
from fedxray.secagg.accumulate import CONTROL, Accumulator, FlatLayout
from fedxray.secagg.fixedpoint import (
    SecaggParams,
    check_capacity,
    decode,
    encode_into,
    max_sites_for,
)
from fedxray.secagg.server import ServerConfig, server_step

FED = "f" * 32
SHAPES = {"conv.weight": (4, 3), "fc.bias": (5,), "fc.weight": (2, 7)}


def _site_vector(layout, update, count, params, rng):
    """Encode one site's update into the flat layout (control words first)."""
    flat = np.zeros(layout.size, dtype=np.uint64)
    views = layout.views(flat)
    views[CONTROL][:] = [count, 1]
    for name in layout.model_shapes:
        out = views[name].reshape(-1)
        encode_into(out, update[name], count, params, rng)
    return flat


def _simulate(n_sites, dropped, strict, params, seed):
    """Run one round in-process; returns (unmasked flat sum, survivors, updates, counts)."""
    r = np.random.default_rng(seed)
    layout = FlatLayout.for_model(SHAPES)
    idents = [keys.generate(f"site{i:02d}") for i in range(n_sites)]
    cards = [k.public for k in idents]
    cohort = pairwise.cohort_digest(cards)
    round_number = int(r.integers(1, 1000))
    survivors = [k for k in idents if k.name not in dropped]
    updates, counts, nonces = {}, {}, {}
    acc = Accumulator(layout)
    for k in idents:
        upd = {n: (r.normal(0, params.clip / 2, s)).astype(np.float32) for n, s in SHAPES.items()}
        count = int(r.integers(1, params.max_examples + 1))
        updates[k.name], counts[k.name] = upd, count
        flat = _site_vector(layout, upd, count, params, np.random.default_rng(r.integers(1 << 62)))
        seeds = pairwise.pair_seeds(k, cards, FED, round_number, cohort)
        nonce = r.bytes(16)
        nonces[k.name] = nonce
        own = pairwise.self_seed(k, FED, round_number, nonce) if strict else None
        prg.add_streams(flat, pairwise.mask_streams(k.name, seeds, own))
        if k.name not in dropped:  # a dropped site's masked vector never reaches the sum
            acc.add(layout.views(flat))
    total = acc.flat.copy()
    for k in survivors:
        peers = [c for c in cards if c.name in dropped]
        revealed = pairwise.pair_seeds(k, peers, FED, round_number, cohort)
        own = pairwise.self_seed(k, FED, round_number, nonces[k.name]) if strict else None
        prg.add_streams(total, pairwise.removal_streams(k.name, revealed, own))
    return layout, total, [k.name for k in survivors], updates, counts


@pytest.mark.parametrize("trial", range(10))
def test_unmasked_mean_equals_weighted_mean(trial):
    rnd = random.Random(1000 + trial)
    n = rnd.randint(2, 20)
    strict = trial % 2 == 1
    n_drop = rnd.randint(0, n - 1)  # at least one survivor
    dropped = set(rnd.sample([f"site{i:02d}" for i in range(n)], n_drop))
    params = SecaggParams(
        frac_bits=rnd.choice([16, 24, 32]),
        clip=rnd.choice([0.5, 1.0, 4.0]),
        max_examples=rnd.choice([10, 5000, 1_000_000]),
        strict=strict,
    )
    check_capacity(params, n)
    layout, total, survivors, updates, counts = _simulate(n, dropped, strict, params, trial)
    views = layout.views(total)
    n_examples = sum(counts[s] for s in survivors)
    assert int(views[CONTROL][0]) == n_examples
    assert int(views[CONTROL][1]) == len(survivors)
    bound = len(survivors) * params.resolution / n_examples
    for name in SHAPES:
        mean = decode(views[name], params) / n_examples
        expected = (
            sum(
                counts[s] * np.clip(updates[s][name].astype(np.float64), -params.clip, params.clip)
                for s in survivors
            )
            / n_examples
        )
        err = np.abs(mean - expected).max()
        assert err <= bound * (1 + 1e-9) + 1e-12 * params.clip


def test_masks_do_not_cancel_without_reveals():
    """Sanity check of the check above: leaving out a dropped site's reveal breaks the control."""
    params = SecaggParams(frac_bits=24, clip=1.0, max_examples=100)
    layout = FlatLayout.for_model(SHAPES)
    idents = [keys.generate(n) for n in ("a", "b", "c", "d")]
    cards = [k.public for k in idents]
    cohort = pairwise.cohort_digest(cards)
    acc = Accumulator(layout)
    for k in idents[:3]:  # d drops, nobody reveals
        flat = _site_vector(
            layout,
            {n: np.zeros(s, np.float32) for n, s in SHAPES.items()},
            5,
            params,
            np.random.default_rng(0),
        )
        prg.add_streams(
            flat, pairwise.mask_streams(k.name, pairwise.pair_seeds(k, cards, FED, 1, cohort))
        )
        acc.add(layout.views(flat))
    assert int(layout.views(acc.flat)[CONTROL][1]) != 3


def test_pair_keys_are_symmetric_and_bound():
    a, b, c = (keys.generate(n) for n in ("a", "b", "c"))
    k_ab = pairwise.pair_key(a, b.public, FED)
    assert k_ab == pairwise.pair_key(b, a.public, FED)
    assert k_ab != pairwise.pair_key(a, c.public, FED)
    assert k_ab != pairwise.pair_key(a, b.public, "e" * 32)
    cohort = pairwise.cohort_digest([a.public, b.public, c.public])
    other = pairwise.cohort_digest([a.public, b.public])
    seeds = {
        pairwise.round_seed(k_ab, FED, 1, cohort),
        pairwise.round_seed(k_ab, FED, 2, cohort),
        pairwise.round_seed(k_ab, FED, 1, other),
        k_ab,
    }
    assert len(seeds) == 4
    assert pairwise.pair_sign("a", "b") == 1 and pairwise.pair_sign("b", "a") == -1
    nonce = bytes(16)
    assert pairwise.self_seed(a, FED, 1, nonce) != pairwise.self_seed(a, FED, 1, b"\1" * 16)
    assert pairwise.self_seed(a, FED, 1, nonce) != pairwise.self_seed(b, FED, 1, nonce)


def test_prg_is_deterministic_and_chunk_independent():
    seed = bytes(range(32))
    n = prg.CHUNK_WORDS * 2 + 123
    full = prg.expand(seed, n)
    assert full.dtype == np.uint64 and full.shape == (n,)
    assert np.array_equal(full, prg.expand(seed, n))
    # Reading the stream in two pieces gives the same words as reading it at once.
    s = prg.MaskStream(seed)
    head = prg.MaskStream(seed).next_words(10).copy()
    assert np.array_equal(head, full[:10])
    part = np.zeros(7, np.uint64)
    prg.add_streams(part, [(s, 1)])
    rest = np.zeros(n - 7, np.uint64)
    prg.add_streams(rest, [(s, 1)])
    assert np.array_equal(np.concatenate([part, rest]), full)
    # +stream then -stream is the identity modulo 2^64.
    x = np.arange(n, dtype=np.uint64)
    prg.add_streams(x, [(prg.MaskStream(seed), 1), (prg.MaskStream(seed), -1)])
    assert np.array_equal(x, np.arange(n, dtype=np.uint64))
    with pytest.raises(ValueError):
        prg.MaskStream(b"short")


def _uniform(words: np.ndarray) -> bool:
    """Chi-square on byte frequencies and per-bit balance; false alarm rate ~1e-6 per call."""
    b = words.view(np.uint8)
    counts = np.bincount(b, minlength=256)
    chi2 = ((counts - b.size / 256) ** 2 / (b.size / 256)).sum()
    if stats.chi2.sf(chi2, 255) < 1e-6:
        return False
    bits = np.unpackbits(b).reshape(-1, 64).sum(axis=0)
    z = np.abs(bits - words.size / 2) / np.sqrt(words.size / 4)
    return bool(z.max() < 6.0)


def test_masked_update_looks_uniform_even_with_one_key_withheld():
    params = SecaggParams(frac_bits=24, clip=1.0, max_examples=100)
    n = 1 << 15
    layout = FlatLayout.for_model({"w": (n,)})
    idents = [keys.generate(f"s{i}") for i in range(5)]
    cards = [k.public for k in idents]
    cohort = pairwise.cohort_digest(cards)
    me = idents[2]
    # A very structured update: a constant, so its encoding alone is far from uniform.
    plain = _site_vector(
        layout, {"w": np.full(n, 0.25, np.float32)}, 7, params, np.random.default_rng(1)
    )
    assert not _uniform(plain)
    seeds = pairwise.pair_seeds(me, cards, FED, 3, cohort)
    masked = plain.copy()
    prg.add_streams(masked, pairwise.mask_streams(me.name, seeds))
    assert _uniform(masked)
    # An adversary who knows every pair seed but one still sees uniform words.
    for withheld in seeds:
        known = {p: s for p, s in seeds.items() if p != withheld}
        partial = masked.copy()
        prg.add_streams(partial, pairwise.removal_streams(me.name, known))
        assert _uniform(partial), withheld
    # ... and with every seed known, the encoding is back: the test can tell.
    prg.add_streams(masked, pairwise.removal_streams(me.name, seeds))
    assert np.array_equal(masked, plain)


def test_stochastic_rounding_is_unbiased_and_within_one_unit():
    params = SecaggParams(frac_bits=8, clip=4.0, max_examples=10)
    x = np.full(200_000, 0.3, dtype=np.float32)
    out = np.empty(x.size, np.uint64)
    encode_into(out, x, 3, params, np.random.default_rng(5))
    values = decode(out, params)
    target = 3 * float(np.float32(0.3))
    assert np.abs(values - target).max() < params.resolution
    # Both neighbours of the grid occur, and the mean converges to the exact value.
    assert len(np.unique(values)) == 2
    assert abs(values.mean() - target) < 5 * params.resolution / np.sqrt(x.size)


def test_encode_clips_and_refuses_bad_input():
    params = SecaggParams(frac_bits=16, clip=1.0, max_examples=10)
    out = np.empty(4, np.uint64)
    clipped = encode_into(
        out, np.array([-3, 0.5, 2, 1], np.float32), 2, params, np.random.default_rng()
    )
    assert clipped == 2
    assert np.allclose(decode(out, params), [-2, 1, 2, 2], atol=params.resolution)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(FedxrayError, match="non-finite"):
            encode_into(
                out, np.array([0, bad, 0, 0], np.float32), 1, params, np.random.default_rng()
            )
    # Huge but finite values (their sum overflows) are clipped, not mistaken for infinities.
    huge = np.array([1e308, 1e308, -1e308, 0.25])
    assert encode_into(out, huge, 1, params, np.random.default_rng()) == 3
    assert np.allclose(decode(out, params), [1, 1, -1, 0.25], atol=params.resolution)
    with pytest.raises(FedxrayError, match="examples"):
        encode_into(out, np.zeros(4, np.float32), 11, params, np.random.default_rng())
    with pytest.raises(FedxrayError, match="examples"):
        encode_into(out, np.zeros(4, np.float32), 0, params, np.random.default_rng())


def test_capacity_bound_is_tight_enough_and_refuses_overflow():
    # 52 + log2(2 * 1 * 8) = 56 bits per site; with 2 bits of headroom, 2^6 = 64 sites fit.
    params = SecaggParams(frac_bits=52, clip=1.0, max_examples=8)
    cap = check_capacity(params, 64)
    assert cap.max_sites == 64
    with pytest.raises(FedxrayError, match="overflow"):
        check_capacity(params, 65)
    # The worst case that the check admits sums exactly (no wrap-around) ...
    for sign in (1.0, -1.0):
        out = np.empty(3, np.uint64)
        encode_into(out, np.full(3, sign * 5.0, np.float32), 8, params, np.random.default_rng())
        total = np.zeros(3, np.uint64)
        for _ in range(64):
            np.add(total, out, out=total)
        assert np.allclose(decode(total, params), sign * 64 * 8, rtol=1e-12)
        # ... while 5x the admitted number of sites wraps around: the refusal is warranted.
        for _ in range(64 * 4):
            np.add(total, out, out=total)
        assert not np.allclose(decode(total, params), sign * 320 * 8, rtol=1e-3)


def test_capacity_accepts_plan_defaults_and_validates_settings():
    cap = check_capacity({"frac_bits": 24, "clip": 4.0, "max_examples": 1_000_000}, 20)
    assert cap.bits_needed <= 64 and cap.max_sites >= 1000
    with pytest.raises(FedxrayError, match="overflow"):
        check_capacity({"frac_bits": 40, "clip": 4.0, "max_examples": 1_000_000}, 3)
    bad = [
        {"frac_bits": 4, "clip": 1.0, "max_examples": 10},
        {"frac_bits": 24, "clip": 0.0, "max_examples": 10},
        {"frac_bits": 24, "clip": float("nan"), "max_examples": 10},
        # Below one fixed-point step every update would encode as zero; the second is the
        # subnormal that once overflowed the capacity check (found by test_fuzz_artifacts).
        {"frac_bits": 24, "clip": 1e-9, "max_examples": 10},
        {"frac_bits": 24, "clip": 2.225073858507203e-309, "max_examples": 1_000_000},
        {"frac_bits": 24, "clip": 1.0, "max_examples": 0},
        {"frac_bits": 24.5, "clip": 1.0, "max_examples": 10},
        {"frac_bits": 24, "clip": 1.0, "max_examples": 10, "strict": "yes"},
        {"frac_bits": 24, "clip": 1.0, "max_examples": 10, "min_sites": 1},
        {"frac_bits": 24, "clip": 1.0, "max_examples": 10, "min_sites": 0},
        {"clip": 1.0},
    ]
    for settings in bad:
        with pytest.raises(FedxrayError):
            check_capacity(settings, 3)
    # Parameters made without the checks still give a finite site limit, not an overflow.
    assert max_sites_for(SecaggParams(frac_bits=24, clip=1e-300, max_examples=1)) == 2**64
    # Two sites per round is an explicit opt-in; three stays the default.
    base = {"frac_bits": 24, "clip": 1.0, "max_examples": 10}
    assert SecaggParams.from_settings({**base, "min_sites": 2}).min_sites == 2
    assert SecaggParams.from_settings(base).min_sites == 3
    check_capacity({**base, "min_sites": 2}, 2)


def test_layout_and_accumulator():
    layout = FlatLayout.for_model({"b": (2,), "a": (2, 2)})
    assert [e[0] for e in layout.entries] == [CONTROL, "a", "b"]
    assert layout.size == 2 + 4 + 2
    acc = Accumulator(layout)
    top = np.iinfo(np.uint64).max
    one = {n: np.full(s, top, np.uint64) for n, (s, _) in layout.tensor_layout().items()}
    acc.add(one)
    acc.add(one)
    assert acc.count == 2 and (acc.flat == top - 1).all()  # wraps modulo 2^64
    with pytest.raises(ValueError):
        FlatLayout.for_model({CONTROL: (1,)})
    with pytest.raises(ValueError):
        acc.add({**one, "a": np.zeros((2, 2), np.float32)})


def test_server_steps():
    w = {"a": np.array([1.0, 2.0], np.float32), "frozen": np.array([5.0], np.float32)}
    d1 = {"a": np.array([0.5, -1.0])}
    d2 = {"a": np.array([0.25, 0.25])}
    avg, st = server_step(w, d1, {}, ServerConfig("fedavg", lr=0.5))
    assert np.allclose(avg["a"], [1.25, 1.5]) and st == {} and avg["frozen"][0] == 5.0
    cfg = ServerConfig("momentum", lr=1.0, momentum=0.5)
    w1, s1 = server_step(w, d1, {}, cfg)
    assert np.allclose(w1["a"], w["a"] + d1["a"])  # first step: no history yet
    w2, s2 = server_step(w1, d2, s1, cfg)
    assert np.allclose(w2["a"], w1["a"] + 0.5 * d1["a"] + d2["a"])
    assert set(s2) == {"m/a"}
    cfg = ServerConfig("fedadam", lr=0.01)
    w1, s1 = server_step(w, d1, {}, cfg)
    step = w1["a"] - w["a"]
    assert np.all(np.sign(step) == np.sign(d1["a"]))
    limit = 0.01 * (1 - cfg.beta1) / np.sqrt(1 - cfg.beta2)
    assert np.all(np.abs(step) <= limit * (1 + 1e-5))
    assert set(s1) == {"m/a", "v/a"} and np.all(s1["v/a"] > 0)
    with pytest.raises(FedxrayError):
        ServerConfig.from_settings({"optimizer": "sgd"})
    with pytest.raises(FedxrayError):
        ServerConfig.from_settings({"optimizer": "fedavg", "lr": -1})
    assert ServerConfig.from_settings(
        {"optimizer": "momentum", "lr": 1.0, "momentum": 0.9}
    ).slots == ("m",)


def test_masking_memory_does_not_grow_with_the_number_of_peers():
    """All the streams of one call share one chunk buffer: at 0.5 MiB each, a buffer per peer
    would cost a coordinator 50 MB for 100 removed masks."""
    import tracemalloc

    x = np.zeros(prg.CHUNK_WORDS * 2, np.uint64)
    streams = [(prg.MaskStream(bytes([i]) * 32), 1) for i in range(200)]
    tracemalloc.start()
    try:
        prg.add_streams(x, streams)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * prg.CHUNK_WORDS * 8  # one buffer (plus slack), not 200
