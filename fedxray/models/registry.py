"""The models fedxray can train: the built-in ones and plug-ins from the ``fedxray.models``
entry-point group (the contract is in fedxray.models.spec), and the tensor layout that travels.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib.metadata import entry_points

import numpy as np
import torch
from torch import nn

from fedxray.errors import FedxrayError, VerificationError
from fedxray.models.backbone import (
    SUFFIX,
    backbone_of,
    build_unweighted,
    build_weighted,
    split_model_id,
)
from fedxray.models.resnet import resnet18
from fedxray.models.scatterlinear import UnitImages, build_scatter_linear
from fedxray.models.smallcnn import SmallCNN
from fedxray.models.spec import ModelSpec

ENTRY_POINTS = "fedxray.models"

BUILTIN = (
    ModelSpec(
        "smallcnn",
        lambda num_classes, in_channels, _size: SmallCNN(num_classes, in_channels),
        image_sizes=(8, 64),
        description="a small CNN (~100k parameters) for 64 px radiographs",
    ),
    # ~6k parameters: DP noise grows with the parameter count, so on a few hundred images
    # (the sample federation) a tiny model learns more under DP than a larger one.
    ModelSpec(
        "tinycnn",
        lambda num_classes, in_channels, _size: SmallCNN(
            num_classes, in_channels, widths=(8, 16, 16, 16), head_grid=2
        ),
        image_sizes=(8, 32),
        description="a tiny CNN (~6k parameters) for a few hundred images under DP",
    ),
    ModelSpec(
        "resnet18",
        lambda num_classes, in_channels, _size: resnet18(num_classes, in_channels),
        image_sizes=(32, 224),
        description="ResNet-18 with GroupNorm (PriMIA's architecture)",
    ),
    # Fixed wavelet scattering features (no parameters, cached per image) and a linear head:
    # issue 10's recipe (benchmarks/research/REPORT.md), the default.
    ModelSpec(
        "scatter-linear",
        build_scatter_linear,
        image_sizes=(32, 128),
        input_view=UnitImages,
        front_end="front_end",
        description="wavelet scattering (J=3, L=8, order 2) and a linear head",
    ),
    # A frozen pretrained network (fixed front end) and the same linear head: the backbone's
    # weights are imported at init and travel in the plan (fedxray.models.backbone).
    *(
        ModelSpec(
            f"{name}{SUFFIX}",
            functools.partial(build_unweighted, f"{name}{SUFFIX}"),
            image_sizes=(32, 128),
            input_view=UnitImages,
            front_end="front_end",
            description=f"a linear head on a frozen pretrained {title} "
            "(torchvision weights imported at init)",
        )
        for name, title in (("resnet18", "ResNet-18"), ("densenet121", "DenseNet-121"))
    ),
)
# The built-in models that build from a seed alone, and those that need imported weights.
PRETRAINED_NAMES: tuple[str, ...] = tuple(
    s.name for s in BUILTIN if backbone_of(s.name) is not None
)
MODEL_NAMES: tuple[str, ...] = tuple(s.name for s in BUILTIN if s.name not in PRETRAINED_NAMES)


@functools.cache
def _plugins() -> dict[str, ModelSpec]:
    """The specs that installed packages register under ``fedxray.models``."""
    found: dict[str, ModelSpec] = {}
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name in MODEL_NAMES + PRETRAINED_NAMES or ep.name in found:
            raise FedxrayError(f"two models are named {ep.name!r} (plug-in {ep.value})")
        try:
            obj = ep.load()
            spec = obj if isinstance(obj, ModelSpec) else obj()
        except Exception as e:  # a broken plug-in must not look like a fedxray bug
            raise FedxrayError(
                f"model plug-in {ep.name!r} ({ep.value}) cannot be loaded: {type(e).__name__}: {e}"
            ) from None
        if not isinstance(spec, ModelSpec) or spec.name != ep.name:
            raise FedxrayError(
                f"model plug-in {ep.name!r} ({ep.value}) is not a ModelSpec named {ep.name!r}"
            )
        found[ep.name] = spec
    return found


def reload_plugins() -> None:
    """Look for plug-ins again (after installing one in this process)."""
    _plugins.cache_clear()
    _layout.cache_clear()


def model_names() -> tuple[str, ...]:
    """Every model this installation can train: the built-in ones, then the plug-ins."""
    return MODEL_NAMES + PRETRAINED_NAMES + tuple(sorted(_plugins()))


def get_spec(arch: str) -> ModelSpec:
    """The spec of a model id: an architecture's name, or for a frozen-backbone model
    ``name@<sha256 of its backbone weights>`` (the weights it builds with)."""
    arch, digest = split_model_id(arch)
    if digest is not None:
        spec = get_spec(arch)
        if backbone_of(arch) is None:
            raise FedxrayError(f"{arch} takes no pretrained backbone")
        return dataclasses.replace(spec, build=functools.partial(build_weighted, arch, digest))
    for spec in BUILTIN:  # no entry-point scan for the built-in models
        if spec.name == arch:
            return spec
    spec = _plugins().get(arch)
    if spec is None:
        raise FedxrayError(
            f"unknown model architecture: {arch!r}",
            hint=f"choose one of {', '.join(model_names())}",
        )
    return spec


def check_model(model, num_classes: int, centering: bool = False, augment: bool = False) -> None:
    """Refuse, when a plan is made, a model it could not use: ``model`` holds the plan's
    arch, image_size and in_channels; ``centering`` needs a head with a ``center``;
    ``augment`` a model without a fixed front end (whose features are cached per image)."""
    spec = get_spec(model.arch)
    needs = backbone_of(model.arch)
    if needs and not model.backbone_sha256:
        raise FedxrayError(
            f"{model.arch} needs pretrained weights",
            hint=f"give torchvision's {needs} state dict (a .pth or .safetensors file)",
            option="init",
        )
    if model.backbone_sha256 and not needs:
        raise FedxrayError(f"{model.arch} takes no pretrained backbone")
    if model.in_channels not in spec.in_channels:
        if spec.in_channels == (1,):
            raise FedxrayError("models take single-channel (greyscale) input")
        raise FedxrayError(f"{spec.name} takes {' or '.join(map(str, spec.in_channels))} channels")
    with torch.device("meta"):  # shapes only
        module = build_model(model.model_id, model.image_size, num_classes, model.in_channels)
    if spec.front_end is not None:
        front = module.get_submodule(spec.front_end)
        if any(p.requires_grad for p in front.parameters()):
            raise FedxrayError(f"{spec.name}: the front end {spec.front_end!r} must be frozen")
        if augment:
            raise FedxrayError(
                f"{spec.name} trains its head on features computed once per image: it cannot "
                "augment the images",
                hint="leave augmentation off for this model",
                option="no_augment",
            )
    head = getattr(module, "head", None)
    if centering and not (hasattr(head, "embed") and hasattr(head, "center")):
        raise FedxrayError(
            f"{spec.name} has no center to release: centering is for a linear head on a "
            "fixed front end (scatter-linear)",
            hint="create the plan without it",
            option="no_centering",
        )


def default_image_size(arch: str) -> int:
    """The input size (pixels, square) an architecture is meant for."""
    return get_spec(arch).default_image_size


def build_model(
    arch: str,
    image_size: int,
    num_classes: int,
    in_channels: int = 1,
    seed: int | None = None,
) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same weights everywhere."""
    spec = get_spec(arch)
    if image_size < spec.min_image_size:
        raise FedxrayError(f"image size {image_size} is too small for {arch}")
    if num_classes < 2:
        raise FedxrayError(f"need at least 2 classes, got {num_classes}")
    if seed is None:
        return spec.build(num_classes, in_channels, image_size)
    # A private RNG stream: building a model must not disturb the caller's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(num_classes, in_channels, image_size)


def state_layout(
    arch: str, image_size: int, num_classes: int, in_channels: int = 1
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, numpy dtype name) of every tensor that travels between sites."""
    return dict(_layout(arch, int(image_size), int(num_classes), int(in_channels)))


@functools.lru_cache(maxsize=16)  # building even a meta model costs ~0.1 s; layouts never change
def _layout(arch: str, image_size: int, num_classes: int, in_channels: int) -> tuple:
    with torch.device("meta"):  # shapes only, no memory, no initialisation cost
        model = build_model(arch, image_size, num_classes, in_channels)
    return tuple((name, (tuple(t.shape), "float32")) for name, t in _travelling(model).items())


def _travelling(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point state that is trained and sent: frozen parameters (a fixed front
    end) and non-persistent buffers stay behind."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {
        name: t
        for name, t in model.state_dict().items()
        if t.is_floating_point() and name not in frozen
    }


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's travelling tensors as float32 numpy arrays (copies)."""
    return {
        name: t.detach().to("cpu", torch.float32).numpy().copy()
        for name, t in _travelling(model).items()
    }


def load_numpy_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load ``state`` into ``model`` in place; names and shapes must match exactly."""
    own = _travelling(model)
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
