"""scatter-linear: a fixed scattering front end (nothing of it trains or travels), its
features cached once per shard in a private file, and a linear head."""

from __future__ import annotations

import stat

import numpy as np
import torch

from fedxray.models.frontend import FrontEndModel, ScatteringFrontEnd, ScatterSettings
from fedxray.models.registry import build_model, state_layout
from fedxray.training import features


def test_front_end_is_fixed_and_has_the_documented_shape():
    front = ScatteringFrontEnd(ScatterSettings(32))
    assert not list(front.parameters()) and not front.state_dict()
    assert front.output_shape == (217, 2, 2)  # 1 + 3*8 + 8*8*3 paths, 32 px / 16
    assert ScatterSettings(128).output_shape == (217, 8, 8)  # the recipe: 13,888 features
    x = torch.rand(3, 1, 32, 32)
    out = front(x)
    assert out.shape == (3, 217, 2, 2) and torch.isfinite(out).all()
    # Each example's features depend on that example alone.
    assert torch.allclose(front(x[1:2]), out[1:2], atol=1e-5)


def test_only_the_head_travels_and_it_starts_at_zero():
    layout = state_layout("scatter-linear", 32, 3)
    assert layout == {
        "head.center": ((868,), "float32"),
        "head.linear.weight": ((3, 868), "float32"),
        "head.linear.bias": ((3,), "float32"),
    }
    model = build_model("scatter-linear", 32, 3, seed=5)
    assert isinstance(model, FrontEndModel)
    assert all(float(p.detach().abs().max()) == 0 for p in model.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "head.linear.weight",
        "head.linear.bias",
    ]
    # Unit-norm features: the head's input has norm 1 for every image.
    z = model.head.embed(model.front_end(torch.rand(4, 1, 32, 32)))
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-4)


def test_features_are_cached_privately_and_reused(tmp_path, monkeypatch):
    front = ScatteringFrontEnd(ScatterSettings(32))
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    first = features.shard_features(front, images, tmp_path / "cache")
    (path,) = (tmp_path / "cache").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list((tmp_path / "cache").glob("*.tmp*"))
    calls = []
    monkeypatch.setattr(features, "compute", lambda *a: calls.append(a))
    again = features.shard_features(front, images, tmp_path / "cache")
    assert calls == [] and np.array_equal(first, again)
    # Other pixels or another front end: another file, never the stale features.
    other = images.copy()
    other[0, 0, 0] ^= 1
    assert features.cache_path(tmp_path, front, other) != path
    bigger = ScatteringFrontEnd(ScatterSettings(64))
    assert features.cache_path(tmp_path, bigger, images).name != path.name
    # A damaged cache file is computed again, not trusted.
    path.write_bytes(b"junk")
    monkeypatch.undo()
    assert np.array_equal(features.shard_features(front, images, tmp_path / "cache"), first)


def test_computing_features_reports_progress_and_a_cache_hit_does_not(tmp_path, monkeypatch):
    """The first round's features take minutes on a CPU: the site hears of every batch."""
    monkeypatch.setattr(features, "BATCH", 2)
    front = ScatteringFrontEnd(ScatterSettings(32))
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    heard: list[tuple[int, int]] = []
    first = features.shard_features(front, images, tmp_path, progress=lambda *a: heard.append(a))
    assert heard == [(2, 5), (4, 5), (5, 5)]
    heard.clear()
    again = features.shard_features(front, images, tmp_path, progress=lambda *a: heard.append(a))
    assert heard == [] and np.array_equal(first, again)


def test_front_end_reuses_the_features_of_a_batch_it_has_seen():
    front = ScatteringFrontEnd(ScatterSettings(32))
    x = torch.rand(4, 1, 32, 32)
    first = front(x)
    first += 1  # the caller's copy: changing it must not change what is remembered
    again = front(x.clone())
    assert torch.allclose(again + 1, first)
    other = x.clone()
    other[2, 0, 5, 5] += 0.5  # another batch is computed, not mistaken for the first
    changed = front(other)
    assert torch.equal(changed[:2], again[:2]) and not torch.equal(changed[2], again[2])
