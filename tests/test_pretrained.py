"""A public pretrained start: importing torchvision state dicts at init, the frozen front end,
and one DP round of its head through the CLI. No weights are downloaded: the files are
randomly initialised torchvision networks saved in torchvision's formats."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fedxray.artifact import parse_unverified
from fedxray.errors import EXIT_ERROR, EXIT_VERIFY, FedxrayError, VerificationError
from fedxray.keys import load_private_key
from fedxray.models import backbone, pretrained
from fedxray.models.registry import build_model, state_layout
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import ModelSettings
from fedxray.training.dp_engine import private_layers
from fedxray.training.features import shard_features
from tests.cli_helpers import assert_clean_error, make_federation, run_cli
from tests.conftest import REPO

SIZE = 32  # the smallest input both networks take
HEAD = {"head.center", "head.linear.weight", "head.linear.bias"}  # what trains and travels


def _randomised(name: str) -> torch.nn.Module:
    """torchvision's network with BatchNorm statistics that are not the identity, so that a
    wrongly folded BatchNorm shows."""
    torch.manual_seed(0)
    net = pretrained.torchvision_model(name)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    nets = {name: _randomised(name) for name in pretrained.BACKBONES}
    for name, net in nets.items():
        state = net.state_dict()
        torch.save(state, d / f"{name}.pth")
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / f"{name}.safetensors"))
    # The published DenseNet weights use pre-0.3 layer names ("norm.1"): torchvision renames.
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
           for k, v in nets["densenet121"].state_dict().items()}  # fmt: skip
    torch.save(old, d / "densenet121-old.pth")
    return d, nets


def _features(net: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """torchvision's own eval-mode forward, up to the pooled features."""
    mean = torch.tensor(backbone.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(backbone.IMAGENET_STD).view(1, 3, 1, 1)
    x = (x.expand(-1, 3, -1, -1) - mean) / std
    with torch.no_grad():
        if name == "resnet18":
            net = torch.nn.Sequential(*list(net.children())[:-1])
            return net(x).flatten(1)
        return torch.relu(net.features(x)).mean(dim=(2, 3))


@pytest.mark.parametrize("name", pretrained.BACKBONES)
def test_both_formats_import_the_same_backbone_and_drop_the_head(files, name):
    d, nets = files
    a = pretrained.import_backbone(d / f"{name}.pth", name)
    b = pretrained.import_backbone(d / f"{name}.safetensors", name)
    assert a.digest == b.digest == pretrained.tensor_digest(b.tensors)
    assert a.file_sha256 == hashlib.sha256((d / f"{name}.pth").read_bytes()).hexdigest()
    named = d / f"{name}-{a.file_sha256[:8]}.pth"  # torchvision's naming: a hash prefix
    named.write_bytes((d / f"{name}.pth").read_bytes())
    assert pretrained.import_backbone(named, name).digest == a.digest
    assert set(a.tensors) == set(pretrained.expected_layout(name))
    assert not any(k.startswith(pretrained.HEADS[name]) for k in a.tensors)
    if name == "densenet121":
        old = pretrained.import_backbone(d / "densenet121-old.pth", name)
        assert old.digest == a.digest
    # The frozen front end computes exactly torchvision's eval-mode features.
    backbone.register(a.digest, a.tensors)
    model = build_model(f"{name}-frozen@{a.digest}", SIZE, 3)
    x = torch.rand(3, 1, SIZE, SIZE)
    feats = model.front_end(x)
    assert feats.shape == (3, *model.front_end.output_shape)
    assert torch.allclose(feats.flatten(1), _features(nets[name], name, x), atol=1e-4)
    # Only the head is trainable, travels, and is clipped by the DP engine.
    assert set(model.state_dict()) == HEAD
    assert [n for n, _ in model.named_parameters()] == ["head.linear.weight", "head.linear.bias"]
    assert private_layers(model) == [model.head.linear]
    assert set(state_layout(f"{name}-frozen", SIZE, 3)) == HEAD


def test_the_feature_cache_never_mixes_two_backbones(files, tmp_path):
    d, _ = files
    a = pretrained.import_backbone(d / "resnet18.pth", "resnet18")
    other = dict(a.tensors, **{"conv1.weight": a.tensors["conv1.weight"] * 2})
    b_digest = pretrained.tensor_digest(other)
    backbone.register(a.digest, a.tensors)
    backbone.register(b_digest, other)
    ma = build_model(f"resnet18-frozen@{a.digest}", SIZE, 2).train()
    mb = build_model(f"resnet18-frozen@{b_digest}", SIZE, 2)
    assert not ma.front_end.body.training  # fixed, whatever the mode
    images = np.random.default_rng(0).integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8)
    fa = shard_features(ma.front_end, images, tmp_path)
    fb = shard_features(mb.front_end, images, tmp_path)
    assert len(list(tmp_path.glob("features-*.npy"))) == 2
    assert not np.allclose(fa, fb)
    assert np.array_equal(shard_features(ma.front_end, images, tmp_path), fa)


def test_weights_that_are_not_loaded_are_an_error():
    with pytest.raises(FedxrayError, match="not loaded"):
        build_model("resnet18-frozen@" + "0" * 64, SIZE, 2)
    with pytest.raises(FedxrayError, match="needs pretrained weights"):
        build_model("resnet18-frozen", SIZE, 2)
    with pytest.raises(VerificationError, match="do not match"):
        backbone.register("0" * 64, {"w": np.zeros(2, np.float32)})


class NotATensor:
    pass


def _bad_files(d, src, nets):
    """What is wrong -> (file in ``d``, words of the error); ``src`` holds good files."""
    state = nets["resnet18"].state_dict()
    bad = {}
    torch.save({**state, "extra": NotATensor()}, d / "objects.pth")
    bad["objects"] = ("objects.pth", "NotATensor object, not only tensors")
    torch.save(nets["resnet18"], d / "whole-model.pth")
    bad["whole model"] = ("whole-model.pth", "torchvision.models.resnet.ResNet object")
    (d / "junk.pth").write_bytes(b"not a PyTorch file")
    bad["junk"] = ("junk.pth", "not a readable PyTorch file")
    torch.save({"state_dict": state, "epoch": 3}, d / "checkpoint.pth")
    bad["checkpoint"] = ("checkpoint.pth", "training checkpoint")
    torch.save(list(state.values()), d / "list.pth")
    bad["list"] = ("list.pth", "not a state dict")
    data = (src / "resnet18.pth").read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 2])
    bad["truncated pth"] = ("truncated.pth", "not a readable PyTorch file")
    data = (src / "resnet18.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    bad["truncated safetensors"] = ("truncated.safetensors", "not a readable safetensors")
    bad["other architecture"] = ("densenet121.pth", "looks like densenet121")
    torch.save({k: v for k, v in state.items() if k != "layer4.1.conv2.weight"}, d / "few.pth")
    bad["missing key"] = ("few.pth", "missing 'layer4.1.conv2.weight'")
    torch.save({**state, "conv1.weight": torch.zeros(64, 1, 7, 7)}, d / "shape.pth")
    bad["wrong shape"] = ("shape.pth", "conv1.weight has shape [64, 1, 7, 7]")
    nan = state["layer1.0.bn1.running_var"].clone()
    nan[0] = float("nan")
    torch.save({**state, "layer1.0.bn1.running_var": nan}, d / "nan.pth")
    bad["nan"] = ("nan.pth", "non-finite")
    (d / "resnet18-f37072fd.pth").write_bytes((src / "resnet18.pth").read_bytes())
    bad["name hash"] = ("resnet18-f37072fd.pth", "does not start with f37072fd")
    (d / "weights.bin").write_bytes(b"x")
    bad["suffix"] = ("weights.bin", ".pth or .safetensors")
    return bad


def test_bad_files_are_refused_with_one_line_and_nothing_written(files, tmp_path):
    d, nets = files
    bad = _bad_files(tmp_path, d, nets)
    (tmp_path / "densenet121.pth").write_bytes((d / "densenet121.pth").read_bytes())
    make_federation(tmp_path, "ok", "-o", tmp_path / "unused", "--image-size", "32")
    cards = [tmp_path / f"hosp-{s}.pub" for s in "abc"]
    for what, (name, words) in bad.items():
        out = tmp_path / f"c-{name}"
        r = run_cli("init", "--name", "pt", "-o", out, "--model", "resnet18-frozen",
                    "--image-size", "32", "--init", tmp_path / name, *cards)  # fmt: skip
        assert_clean_error(r, EXIT_ERROR, words)
        assert not (out / "pt.plan").exists() and not (out / "round-0001.model").exists(), what
    r = run_cli("init", "--name", "pt", "-o", tmp_path / "none", "--model", "resnet18-frozen",
                "--image-size", "32", *cards)  # fmt: skip
    assert_clean_error(r, EXIT_ERROR, "needs pretrained weights")
    r = run_cli("init", "--name", "pt", "-o", tmp_path / "gn", "--init", d / "resnet18.pth",
                *cards)  # fmt: skip
    assert_clean_error(r, EXIT_ERROR, "frozen-backbone model only")


def test_init_and_one_dp_round_carry_only_the_head(files, tmp_path):
    d, _ = files
    original = pretrained.import_backbone(d / "resnet18.safetensors", "resnet18")
    make_federation(tmp_path, "pt", "-o", tmp_path / "coord", "--model", "resnet18-frozen",
                    "--image-size", "32", "--rounds", "1", "--local-epochs", "1",
                    "--no-centering", "--epsilon", "4",
                    "--init", d / "resnet18.safetensors")  # fmt: skip
    plan, model = tmp_path / "coord" / "pt.plan", tmp_path / "coord" / "round-0001.model"
    info = json.loads(run_cli("inspect", plan, "--json").out)
    m = info["meta"]["settings"]["model"]
    assert m["arch"] == "resnet18-frozen" and m["backbone_sha256"] == original.digest
    assert m["backbone_file_sha256"] == original.file_sha256
    v = run_cli("verify", model, "--plan", plan, "--json")
    assert v.code == 0, v.err
    assert json.loads(v.out)["backbone_sha256"] == original.digest
    assert set(parse_unverified(model.read_bytes())[0].tensors) == HEAD
    key = tmp_path / "hosp-a.key"
    r = run_cli("prep", REPO / "sample_data" / "hospital-c", "-o", tmp_path / "a.shard",
                "--plan", plan, "--key", key, "-q")  # fmt: skip
    assert r.code == 0, r.err
    r = run_cli("train-local", model, "--data", tmp_path / "a.shard", "--plan", plan,
                "--key", key, "-o", tmp_path / "a.update", "--json")  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(r.out)["dp"] is True
    update = parse_unverified((tmp_path / "a.update").read_bytes())[0]
    assert set(update.tensors) == HEAD
    assert np.abs(update.tensors["head.linear.weight"]).max() > 0
    assert (tmp_path / "a.update").stat().st_size < 100_000  # not 45 MB of frozen weights
    # The backbone the sites used is the imported one, untouched by training.
    used = backbone.weights(original.digest)
    assert all(np.array_equal(used[k], original.tensors[k]) for k in original.tensors)
    # The global model runs: predict builds it from the plan's backbone.
    images = sorted((REPO / "sample_data" / "hospital-c").glob("*.png"))[:2]
    p = run_cli("predict", model, *images, "--plan", plan, "-q")
    assert p.code == 0, p.err
    assert len(p.out.strip().splitlines()) == 3


def test_a_plan_whose_backbone_does_not_match_its_digest_is_refused(files, tmp_path):
    d, _ = files
    make_federation(tmp_path, "pt", "-o", tmp_path / "coord", "--model", "resnet18-frozen",
                    "--image-size", "32", "--init", d / "resnet18.pth")  # fmt: skip
    art = parse_unverified((tmp_path / "coord" / "pt.plan").read_bytes())[0]
    assert len(art.tensors) == len(pretrained.expected_layout("resnet18"))
    data = bytearray((tmp_path / "coord" / "pt.plan").read_bytes())
    data[-5] ^= 1  # one flipped bit in the weights: the signature no longer holds
    with pytest.raises(VerificationError):
        plan_from_bytes(bytes(data))
    r = run_cli("verify", tmp_path / "coord" / "round-0001.model", "--plan", tmp_path / "x.plan")
    assert r.code != 0
    (tmp_path / "x.plan").write_bytes(bytes(data))
    r = run_cli("verify", tmp_path / "coord" / "round-0001.model", "--plan", tmp_path / "x.plan")
    assert_clean_error(r, EXIT_VERIFY)
    # Signed by the coordinator, but the weights are not the ones its settings name.
    plan = plan_from_bytes((tmp_path / "coord" / "pt.plan").read_bytes())
    coordinator = load_private_key(tmp_path / "coord" / "coordinator.key")
    other = dict(art.tensors, **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    forged = create_plan("pt", coordinator, list(plan.sites), plan.settings, backbone=other)
    with pytest.raises(VerificationError, match="do not match their recorded SHA-256"):
        plan_from_bytes(forged)
    unpinned = dataclasses.replace(plan.settings, model=ModelSettings(image_size=32))
    forged = create_plan("pt", coordinator, list(plan.sites), unpinned, backbone=other)
    with pytest.raises(VerificationError, match="carries tensors"):
        plan_from_bytes(forged)


def test_simulate_passes_its_weights_to_init(tmp_path):
    (tmp_path / "resnet18.pth").write_bytes(b"not a PyTorch file")
    r = run_cli("simulate", "-o", tmp_path / "run", "--model", "resnet18-frozen",
                "--image-size", "32", "--init", tmp_path / "resnet18.pth")  # fmt: skip
    assert r.code == EXIT_ERROR and "Traceback" not in r.err
    assert "fedxray: error: " + str(tmp_path / "resnet18.pth") + " is not a readable" in r.err
    assert not (tmp_path / "run").exists()
