"""A frozen pretrained backbone as a fixed front end, and the models built on it.

The front end is torchvision's network without its classifier, with every weight a constant:
BatchNorm is folded into a fixed per-channel affine map (its running statistics are public
ImageNet statistics, never updated), so the features of an image are a deterministic
function of that image and public weights alone. Computing them reads one image at a time and
no statistic of the private data enters the model: only the linear head that follows is
trained (under DP) and travels. Grey images are repeated to 3 channels and normalised with
ImageNet's mean and standard deviation, as the weights expect.

The front end keeps its tensors as non-persistent buffers: they are neither parameters (the
DP engine and the optimiser never see them) nor part of ``state_dict`` (updates, model files,
masked files and checkpoints carry the head only). The weights reach a site inside the
coordinator-signed plan; :func:`register` makes them available to model building by their
digest, which the model's id names (``resnet18-frozen@<sha256>``).

It is a fixed front end in the sense of fedxray.models.frontend (like the scattering
transform): training computes its features once per shard into the site's feature cache
(fedxray.training.features, keyed by the weights' digest) and trains scatter-linear's
normalised linear head on them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedxray.errors import FedxrayError, VerificationError
from fedxray.models.frontend import FixedFrontEnd, FrontEndModel
from fedxray.models.pretrained import HEADS, tensor_digest, torchvision_model
from fedxray.models.scatterlinear import NormalisedLinear

SUFFIX = "-frozen"  # resnet18-frozen, densenet121-frozen
FEATURES = {"resnet18": 512, "densenet121": 1024}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_store: dict[str, dict[str, np.ndarray]] = {}  # digest -> verified backbone tensors
_lock = threading.Lock()


def register(digest: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Make verified backbone weights available to model building under their digest."""
    if tensor_digest(tensors) != digest:
        raise VerificationError("the backbone weights do not match their recorded SHA-256")
    with _lock:
        _store[digest] = dict(tensors)


def weights(digest: str) -> dict[str, np.ndarray]:
    with _lock:
        found = _store.get(digest)
    if found is None:
        raise FedxrayError(
            f"the backbone weights {digest[:12]} are not loaded",
            hint="load the federation's plan first: it carries them",
        )
    return found


def backbone_of(arch: str) -> str | None:
    """'resnet18' for 'resnet18-frozen', None for a model without a pretrained backbone."""
    base = arch.removesuffix(SUFFIX)
    return base if arch.endswith(SUFFIX) and base in FEATURES else None


def split_model_id(model_id: str) -> tuple[str, str | None]:
    """'resnet18-frozen@<sha256>' -> ('resnet18-frozen', '<sha256>'); no '@': (id, None)."""
    arch, _, digest = model_id.partition("@")
    return arch, digest or None


class FixedAffine(nn.Module):
    """A BatchNorm in eval mode, folded: y = x * scale + shift per channel, constants."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
        self.register_buffer("scale", scale.detach().clone(), persistent=False)
        self.register_buffer("shift", shift.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def _freeze(module: nn.Module) -> nn.Module:
    """BatchNorms folded into FixedAffine (their batch counters go with them); every
    parameter a non-persistent buffer (FixedFrontEnd.check_fixed confirms nothing is left)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FixedAffine(child))
        else:
            _freeze(child)
    for name, p in list(module._parameters.items()):
        if p is not None:
            del module._parameters[name]
            module.register_buffer(name, p.detach(), persistent=False)
    return module


class FrozenBackbone(FixedFrontEnd):
    """[B, 1, H, W] images in [0, 1] -> [B, features, 1, 1]: the pretrained network, fixed
    (grey repeated to 3 channels, ImageNet normalisation, global average pooling)."""

    def __init__(self, name: str, tensors: Mapping[str, np.ndarray] | None, digest: str = ""):
        super().__init__()
        net = torchvision_model(name)
        if tensors is not None:  # None: shapes only (a meta-device build)
            state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()}
            head = HEADS[name]
            state.update({k: v for k, v in net.state_dict().items() if k.startswith(head)})
            net.load_state_dict(state, strict=True)
        if name == "resnet18":
            body = nn.Sequential(
                *(m for n, m in net.named_children() if n not in ("fc", "avgpool"))
            )
        else:
            body = nn.Sequential(net.features, nn.ReLU())
        self.name = name
        self.output_shape = (FEATURES[name], 1, 1)
        # The features depend on the weights: the feature cache must never mix two backbones.
        self.key = f"backbone-v1-{name}-{digest or 'unweighted'}"
        self.body = _freeze(body).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.check_fixed()

    def train(self, mode: bool = True) -> FrozenBackbone:
        super().train(mode)
        self.body.eval()  # fixed: nothing in it depends on the mode, but say so
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = ((x.expand(-1, 3, -1, -1) - self.mean) / self.std).to(self.mean.dtype)
            return torch.mean(self.body(x), dim=(2, 3), keepdim=True)


def frozen_backbone_model(
    name: str, tensors: Mapping[str, np.ndarray] | None, digest: str, num_classes: int
) -> FrontEndModel:
    """The frozen backbone and scatter-linear's normalised linear head (only it trains)."""
    front = FrozenBackbone(name, tensors, digest)
    return FrontEndModel(front, NormalisedLinear(front.output_shape, num_classes))


def build_unweighted(arch: str, num_classes: int, in_channels: int, _size: int) -> nn.Module:
    """``arch`` without weights: shapes only (a meta-device build); else an error."""
    return build_weighted(arch, None, num_classes, in_channels, _size)


def build_weighted(
    arch: str, digest: str | None, num_classes: int, in_channels: int, _size: int
) -> nn.Module:
    """The model ``arch`` (e.g. resnet18-frozen) on the backbone weights with ``digest``."""
    name = backbone_of(arch)
    if name is None:
        raise FedxrayError(f"{arch!r} is not a frozen-backbone model")
    if in_channels != 1:
        raise FedxrayError(f"{arch} takes greyscale input (it repeats it to 3 channels)")
    if torch.empty(0).device.type == "meta":
        return frozen_backbone_model(name, None, digest or "", num_classes)
    if digest is None:
        raise FedxrayError(
            f"{arch} needs pretrained weights",
            hint="the federation's plan carries them: build the model from the plan",
        )
    return frozen_backbone_model(name, weights(digest), digest, num_classes)
