"""Models as plug-ins: a package registers a ModelSpec under the ``fedxray.models`` entry points.

The plug-in here is not an image model: a small MLP on a 1-D signal (each image's row
profile), with its own input view. It goes through a whole round on the command line.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fedxray.data.shard import Shard
from fedxray.data.shard_io import write_shard
from fedxray.models import registry
from fedxray.plan import load_plan
from fedxray.verification import load_artifact
from tests.cli_helpers import run_cli

PLUGIN = '''
"""A fedxray model plug-in: an MLP on each image's row profile (a 1-D signal)."""
import numpy as np
import torch
from torch import nn

from fedxray.models.spec import ModelSpec


class RowProfile:
    """The input view: the mean of each image row, scaled like the image models' input."""

    def __init__(self, channels=1):
        self.channels = channels

    def __call__(self, images, device="cpu", augment=None):
        x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).mean(dim=2)
        return ((x - 0.5) / 0.25).to(device)


def build(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Linear(image_size, 8), nn.ReLU(), nn.Linear(8, num_classes))


SPEC = ModelSpec("rowmlp", build, image_sizes=(8, 16), input_view=RowProfile)


def batchnorm():
    """A spec made by a function; BatchNorm mixes examples, so DP-SGD cannot train it."""
    return ModelSpec(
        "bnmlp",
        lambda k, c, s: nn.Sequential(nn.Linear(s, 4), nn.BatchNorm1d(4), nn.Linear(4, k)),
        image_sizes=(8, 16),
        input_view=RowProfile,
    )
'''
ENTRY_POINTS = "[fedxray.models]\nrowmlp = fxplugin_rows:SPEC\nbnmlp = fxplugin_rows:batchnorm\n"
SITES = ("site-a", "site-b", "site-c")
SIZE = 16


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install the plug-in the way pip would, as far as importlib.metadata can tell."""
    root = tmp_path / "site-packages"
    info = root / "fxplugin_rows-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fxplugin-rows\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (root / "fxplugin_rows.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(root))
    registry.reload_plugins()
    yield
    monkeypatch.undo()
    sys.modules.pop("fxplugin_rows", None)
    registry.reload_plugins()


def _shard(seed: int, n: int = 24) -> Shard:
    """Images whose class shows in their vertical brightness profile."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = (rng.random((n, SIZE, SIZE)) * 60).astype(np.uint8)
    for c in range(3):
        images[labels == c, 4 * c : 4 * c + 4, :] += 150
    patients = np.array([f"p{seed}-{i}" for i in range(n)])
    classes = ["normal", "bacterial", "viral"]
    return Shard(images=images, labels=labels, classes=classes, image_size=SIZE, patients=patients)


def test_the_registry_lists_plugins_and_refuses_what_it_cannot_train(plugin, tmp_path):
    assert registry.model_names() == (
        *registry.MODEL_NAMES,
        *registry.PRETRAINED_NAMES,
        "bnmlp",
        "rowmlp",
    )
    assert registry.state_layout("rowmlp", SIZE, 3) == {
        "0.weight": ((8, SIZE), "float32"),
        "0.bias": ((8,), "float32"),
        "2.weight": ((3, 8), "float32"),
        "2.bias": ((3,), "float32"),
    }
    for s in SITES:
        assert run_cli("keygen", s, "-o", tmp_path, "-q").code == 0
    cards = [tmp_path / f"{s}.pub" for s in SITES]
    r = run_cli("init", "--name", "bn", "-o", tmp_path / "bn", "--model", "bnmlp",
                "--image-size", SIZE, *cards)  # fmt: skip
    assert r.code == 1 and "differential privacy" in r.err and "BatchNorm1d" in r.err
    assert not (tmp_path / "bn" / "bn.plan").exists()
    r = run_cli("init", "--name", "x", "-o", tmp_path / "x", "--model", "nope", *cards)
    assert r.code == 1 and "unknown model" in r.err and "rowmlp" in r.err


def test_a_non_image_plugin_trains_through_a_whole_round(plugin, tmp_path):
    for s in SITES:
        (tmp_path / s).mkdir()
        assert run_cli("keygen", s, "-o", tmp_path / s, "-q").code == 0
        write_shard(tmp_path / s / f"{s}.shard", _shard(SITES.index(s)))
    coord = tmp_path / "coord"
    r = run_cli("init", "--name", "rows", "-o", coord, "--model", "rowmlp", "--image-size", SIZE,
                "--rounds", 1, "--local-epochs", 2, "--batch-size", 8, "--seed", 1, "-q",
                *[tmp_path / s / f"{s}.pub" for s in SITES])  # fmt: skip
    assert r.code == 0, r.err
    plan_path = coord / "rows.plan"
    plan = load_plan(plan_path)
    assert plan.settings.model.arch == "rowmlp"
    first = load_artifact((coord / "round-0001.model").read_bytes(), plan=plan, kind="model")
    deltas, counts = [], []
    for s in SITES:
        d = tmp_path / s
        common = ("--plan", plan_path, "--key", d / f"{s}.key")
        r = run_cli("train-local", coord / "round-0001.model", "--data", d / f"{s}.shard",
                    "-o", d / "u.update", "--seed", 3, "--json", *common)  # fmt: skip
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        assert doc["dp"] and 0 < doc["epsilon"] <= 8
        update = load_artifact((d / "u.update").read_bytes(), plan=plan, kind="update")
        deltas.append(update.tensors)
        counts.append(update.header.meta["num_examples"])
        r = run_cli("mask", d / "u.update", "-o", coord / f"{s}.masked", "-q", *common)
        assert r.code == 0, r.err
    ckey = ("--plan", plan_path, "--key", coord / "coordinator.key")
    r = run_cli("aggregate", *[coord / f"{s}.masked" for s in SITES], "--json", *ckey)
    assert r.code == 0, r.err
    assert json.loads(r.out)["closure"] is None  # every site delivered: one trip
    r = run_cli("unmask", coord / "round-0001.sum", "-q", *ckey)
    assert r.code == 0, r.err
    nxt = load_artifact((coord / "round-0002.model").read_bytes(), plan=plan, kind="model")
    assert set(nxt.tensors) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name, w in first.tensors.items():
        mean = sum(c * d[name] for c, d in zip(counts, deltas, strict=True)) / sum(counts)
        assert np.abs(mean).max() > 0
        np.testing.assert_allclose(nxt.tensors[name], w + mean, rtol=0, atol=1e-5)
    # The model runs through its own input view at evaluation too.
    r = run_cli("evaluate", coord / "round-0002.model", tmp_path / "site-a" / "site-a.shard",
                "--plan", plan_path, "--bootstrap", 0, "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["n_images"] == 24
