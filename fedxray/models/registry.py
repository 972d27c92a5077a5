"""Registered architectures, their default input sizes and the tensor layout that travels."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedxray.errors import FedxrayError, VerificationError
from fedxray.models.resnet import resnet18
from fedxray.models.smallcnn import SmallCNN

_BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "smallcnn": lambda num_classes, in_channels: SmallCNN(num_classes, in_channels),
    # ~6k parameters: DP noise grows with the parameter count, so on a few hundred images
    # (the sample federation) a tiny model learns more under DP than a larger one.
    "tinycnn": lambda num_classes, in_channels: SmallCNN(
        num_classes, in_channels, widths=(8, 16, 16, 16), head_grid=2
    ),
    "resnet18": lambda num_classes, in_channels: resnet18(num_classes, in_channels),
}
_DEFAULT_SIZE = {"smallcnn": 64, "tinycnn": 32, "resnet18": 224}
_MIN_SIZE = {"smallcnn": 8, "tinycnn": 8, "resnet18": 32}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def _check_arch(arch: str) -> None:
    if arch not in _BUILDERS:
        raise FedxrayError(
            f"unknown model architecture: {arch!r}", hint=f"choose one of {', '.join(MODEL_NAMES)}"
        )


def check_model(model, num_classes: int, dp: bool = True) -> None:
    """Refuse, when a plan is made, a model it could not train: ``model`` holds the plan's
    arch, image_size and in_channels."""
    _check_arch(model.arch)
    if model.in_channels != 1:
        raise FedxrayError("models take single-channel (greyscale) input")


def default_image_size(arch: str) -> int:
    """The input size (pixels, square) an architecture is meant for."""
    _check_arch(arch)
    return _DEFAULT_SIZE[arch]


def build_model(
    arch: str,
    image_size: int,
    num_classes: int,
    in_channels: int = 1,
    seed: int | None = None,
) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same weights everywhere."""
    _check_arch(arch)
    if image_size < _MIN_SIZE[arch]:
        raise FedxrayError(f"image size {image_size} is too small for {arch}")
    if num_classes < 2:
        raise FedxrayError(f"need at least 2 classes, got {num_classes}")
    if seed is None:
        return _BUILDERS[arch](num_classes, in_channels)
    # A private RNG stream: building a model must not disturb the caller's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[arch](num_classes, in_channels)


def state_layout(
    arch: str, image_size: int, num_classes: int, in_channels: int = 1
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, numpy dtype name) of every tensor that travels between sites."""
    return dict(_layout(arch, int(image_size), int(num_classes), int(in_channels)))


@functools.lru_cache(maxsize=16)  # building even a meta model costs ~0.1 s; layouts never change
def _layout(arch: str, image_size: int, num_classes: int, in_channels: int) -> tuple:
    _check_arch(arch)
    with torch.device("meta"):  # shapes only, no memory, no initialisation cost
        model = build_model(arch, image_size, num_classes, in_channels)
    return tuple(
        (name, (tuple(t.shape), "float32"))
        for name, t in model.state_dict().items()
        if t.is_floating_point()
    )


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's floating-point parameters and buffers as float32 numpy arrays (copies)."""
    return {
        name: t.detach().to("cpu", torch.float32).numpy().copy()
        for name, t in model.state_dict().items()
        if t.is_floating_point()
    }


def load_numpy_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load ``state`` into ``model`` in place; names and shapes must match exactly."""
    own = {n: t for n, t in model.state_dict().items() if t.is_floating_point()}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        n = len(missing) + len(extra)
        raise VerificationError(f"model state does not match the architecture: {what} ({n} names)")
    with torch.no_grad():
        for name, target in own.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != tuple(target.shape):
                raise VerificationError(
                    f"model state does not match the architecture: {name} has shape "
                    f"{tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            if not np.isfinite(value).all():
                raise VerificationError(f"model state has non-finite values in {name}")
            target.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))  # owns its memory
