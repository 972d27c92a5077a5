"""Model registry: shapes, layouts, determinism, DP compatibility (Opacus)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedxray.errors import FedxrayError, VerificationError
from fedxray.models import (
    MODEL_NAMES,
    build_model,
    default_image_size,
    load_numpy_state,
    state_layout,
    state_to_numpy,
)

# Small inputs keep the suite fast; default sizes are exercised by the benchmark.
SMALL = {"smallcnn": 16, "tinycnn": 16, "resnet18": 32, "scatter-linear": 32}
ZERO_INIT = {"scatter-linear"}  # a linear head starts at zero: the seed changes nothing


def test_registry_lists_both_models():
    assert set(MODEL_NAMES) >= {"smallcnn", "resnet18"}
    assert default_image_size("smallcnn") == 64
    assert default_image_size("resnet18") == 224


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(FedxrayError, match="unknown model architecture"):
        build_model("vgg", 64, 2)
    with pytest.raises(FedxrayError):
        state_layout("vgg", 64, 2)


def test_smallcnn_is_about_100k_parameters():
    n = sum(p.numel() for p in build_model("smallcnn", 64, 3).parameters())
    assert 80_000 <= n <= 120_000


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_forward_shape_and_layout(arch):
    size = SMALL[arch]
    model = build_model(arch, size, 3, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 3)
    layout = state_layout(arch, size, 3)
    state = state_to_numpy(model)
    assert set(layout) == set(state)
    for name, (shape, dtype) in layout.items():
        assert state[name].shape == shape
        assert state[name].dtype == np.dtype(dtype) == np.float32
    # The layout does not depend on the input size (adaptive pooling), except for a linear
    # head on a feature map that grows with the image.
    if arch not in ZERO_INIT:
        assert state_layout(arch, 2 * size, 3) == layout


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_seed_determines_weights(arch):
    a = state_to_numpy(build_model(arch, SMALL[arch], 2, seed=7))
    b = state_to_numpy(build_model(arch, SMALL[arch], 2, seed=7))
    c = state_to_numpy(build_model(arch, SMALL[arch], 2, seed=8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a) or arch in ZERO_INIT


def test_seeded_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("smallcnn", 16, 2, seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_no_batchnorm_no_inplace(arch):
    model = build_model(arch, SMALL[arch], 2)
    for m in model.modules():
        assert not isinstance(m, nn.modules.batchnorm._BatchNorm)
        assert not getattr(m, "inplace", False), m


def test_load_numpy_state_round_trip_and_checks():
    model = build_model("smallcnn", 16, 2, seed=0)
    other = build_model("smallcnn", 16, 2, seed=1)
    load_numpy_state(other, state_to_numpy(model))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    state = state_to_numpy(model)
    name = next(iter(state))
    bad = dict(state, **{name: np.zeros((1, 2, 3), np.float32)})
    with pytest.raises(VerificationError, match="shape"):
        load_numpy_state(other, bad)
    missing = {k: v for k, v in state.items() if k != name}
    with pytest.raises(VerificationError, match="missing"):
        load_numpy_state(other, missing)
    with pytest.raises(VerificationError, match="unexpected"):
        load_numpy_state(other, dict(state, extra=np.zeros(1, np.float32)))
    nan = dict(state, **{name: np.full_like(state[name], np.nan)})
    with pytest.raises(VerificationError, match="non-finite"):
        load_numpy_state(other, nan)


def test_resnet18_loads_torchvision_groupnorm_state():
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(num_classes=3, norm_layer=lambda c: nn.GroupNorm(32, c))
    ours = build_model("resnet18", 32, 3, in_channels=3)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), tv.eval()(x), atol=1e-6)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_opacus_validates_and_trains_one_step(arch):
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    size = SMALL[arch]
    model = build_model(arch, size, 2, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    data = torch.utils.data.TensorDataset(torch.randn(8, 1, size, size), torch.arange(8) % 2)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    private, opt, loader = PrivacyEngine().make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    x, y = next(iter(loader))
    opt.zero_grad()
    nn.functional.cross_entropy(private(x), y).backward()
    opt.step()
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
