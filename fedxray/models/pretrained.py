"""Import a public pretrained network (torchvision's ResNet-18 or DenseNet-121 state dict).

A hospital brings the file from a public source (torchvision's published ImageNet weights,
carried in from a connected machine). It is read without running any code: ``.pth`` only
through ``torch.load(weights_only=True)`` (plain tensors in plain containers), ``.safetensors``
through the safetensors library. Its names and shapes must be exactly those of torchvision's
architecture; the classifier head is dropped (fedxray trains its own); every tensor must be
finite. What is kept is the backbone: names -> float32 arrays, and a digest of them that the
plan records so that every site computes the very same features.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from fedxray.errors import FedxrayError
from fedxray.fsio import read_input

# backbone name -> the prefix of its classifier head's tensors (dropped on import)
HEADS = {"resnet18": "fc.", "densenet121": "classifier."}
BACKBONES: tuple[str, ...] = tuple(HEADS)
_SUFFIXES = (".pth", ".pt", ".safetensors")
# DenseNet files published before torchvision 0.3 name layers "norm.1"; torchvision renames
# them to "norm1" when it loads one (the published DenseNet-121 weights are such a file).
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_NAME_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt|safetensors)$")
# torch's message for a class that weights_only loading refuses to build
_DISALLOWED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_HINT = "use torchvision's state dict for {name} (e.g. its published ImageNet weights)"


@dataclass(frozen=True)
class Backbone:
    """Validated backbone weights (no classifier head) and their digest."""

    name: str
    tensors: dict[str, np.ndarray]
    digest: str  # tensor_digest(tensors)
    file_sha256: str | None = None  # SHA-256 of the imported file, when imported from one

    def describe(self) -> dict:
        return {
            "backbone": self.name,
            "sha256": self.digest,
            "file_sha256": self.file_sha256,
            "tensors": len(self.tensors),
            "parameters": int(sum(t.size for t in self.tensors.values())),
        }


def torchvision_model(name: str) -> torch.nn.Module:
    """torchvision's architecture for ``name``, randomly initialised (nothing downloaded)."""
    import torchvision

    if name not in HEADS:
        raise FedxrayError(f"unknown backbone {name!r}", hint=f"choose {', '.join(BACKBONES)}")
    return getattr(torchvision.models, name)(weights=None)


def expected_layout(name: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every backbone tensor torchvision's ``name`` has (head and batch
    counters excluded)."""
    with torch.device("meta"):
        model = torchvision_model(name)
    head = HEADS[name]
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.startswith(head) and not k.endswith("num_batches_tracked")
    }


def tensor_digest(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names, shapes and float32 bytes of ``tensors`` in name order: the
    same weights give the same digest whatever file format carried them."""
    h = hashlib.sha256(b"fedxray-backbone-v1\0")
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name], dtype="<f4")
        h.update(f"{name}\0{list(t.shape)}\0".encode())
        h.update(t.tobytes())
    return h.hexdigest()


def import_backbone(path: str | Path, name: str) -> Backbone:
    """Read and validate a torchvision state dict for backbone ``name`` from ``path``."""
    if name not in HEADS:
        raise FedxrayError(f"unknown backbone {name!r}", hint=f"choose {', '.join(BACKBONES)}")
    path = Path(path)
    data = read_input(path, "pretrained weights")
    file_sha256 = hashlib.sha256(data).hexdigest()
    _check_name_hash(path, file_sha256)
    raw = _read_state(data, path)
    tensors = validate_state(raw, name, str(path))
    return Backbone(name, tensors, tensor_digest(tensors), file_sha256)


def _check_name_hash(path: Path, file_sha256: str) -> None:
    """torchvision names its files NAME-<first hex digits of their SHA-256>.pth (and torch.hub
    checks that when it downloads): a file so named must have that hash."""
    m = _NAME_HASH.search(path.name)
    if m and not file_sha256.startswith(m.group(1)):
        raise FedxrayError(
            f"{path}: its SHA-256 {file_sha256[:16]}... does not start with {m.group(1)} as "
            "its name says (damaged or incomplete download)",
            hint="download it again and compare its SHA-256",
        )


def _read_state(data: bytes, path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise FedxrayError(
            f"{path}: pretrained weights must be a .pth or .safetensors file",
            hint="torchvision publishes .pth files; safetensors files work too",
        )
    if suffix == ".safetensors":
        try:
            return st_load(data)
        except (SafetensorError, ValueError, OSError) as e:
            raise FedxrayError(
                f"{path} is not a readable safetensors file ({_first_line(e)})",
                hint="is it truncated? download it again and compare its SHA-256",
            ) from None
    try:
        # weights_only: plain tensors in plain containers; no code from the file ever runs.
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        found = _DISALLOWED.search(str(e))
        if found is None:  # not a pickle at all, or a damaged one
            raise _unreadable(path) from None
        raise FedxrayError(
            f"{path} holds a {found.group(1)} object, not only tensors, and was not loaded",
            hint="use a plain state dict (torch.save(model.state_dict(), ...)), not a pickled "
            "model or training checkpoint",
        ) from None
    except Exception:  # a damaged file can fail anywhere in the reader: one clear message
        raise _unreadable(path) from None
    if not isinstance(obj, Mapping):
        raise FedxrayError(
            f"{path} holds a {type(obj).__name__}, not a state dict",
            hint="use a plain state dict (torch.save(model.state_dict(), ...))",
        )
    return dict(obj)


def _unreadable(path: Path) -> FedxrayError:
    return FedxrayError(
        f"{path} is not a readable PyTorch file",
        hint="is it truncated? download it again and compare its SHA-256",
    )


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def validate_state(state: Mapping, name: str, what: str) -> dict[str, np.ndarray]:
    """The backbone tensors of a torchvision state dict for ``name``: names and shapes exactly
    torchvision's (the head dropped, old DenseNet names renamed), every value finite; else a
    FedxrayError saying what is wrong."""
    hint = _HINT.format(name=name)
    wrapped = [k for k in ("state_dict", "model", "model_state_dict") if k in state]
    if wrapped and not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise FedxrayError(
            f"{what} is a training checkpoint, not a state dict (it has {wrapped[0]!r})",
            hint=f"save its {wrapped[0]!r} entry on its own",
        )
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FedxrayError(f"{what}: entry {str(key)[:60]!r} is not a named tensor", hint=hint)
        m = _OLD_DENSENET.match(key) if name == "densenet121" else None
        renamed[m.group(1) + m.group(2) if m else key] = value
    expected = expected_layout(name)
    head = HEADS[name]
    given = {
        k: v
        for k, v in renamed.items()
        if not k.startswith(head) and not k.endswith("num_batches_tracked")
    }
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        other = _guess(given, name)
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise FedxrayError(
            f"{what} is not a torchvision {name} state dict{other}: {detail} "
            f"({len(missing)} missing, {len(extra)} unexpected names)",
            hint=hint,
        )
    out = {}
    for key, shape in expected.items():
        t = given[key]
        if tuple(t.shape) != shape:
            raise FedxrayError(
                f"{what}: {key} has shape {list(t.shape)}, torchvision's {name} has {list(shape)}",
                hint=hint,
            )
        if not t.is_floating_point():
            raise FedxrayError(f"{what}: {key} is not a floating-point tensor", hint=hint)
        arr = t.detach().to(torch.float32).numpy()
        if not np.isfinite(arr).all():
            raise FedxrayError(
                f"{what}: {key} has non-finite values (NaN or infinity)",
                hint="the file is damaged or was saved from a diverged run",
            )
        out[key] = arr
    _check_strict(out, name, what)
    return out


def _guess(given: Mapping, name: str) -> str:
    """' (it looks like X)' when the names are those of the other backbone."""
    for other in BACKBONES:
        if other != name and set(expected_layout(other)) <= set(given):
            return f" (it looks like {other})"
    return ""


def _check_strict(tensors: Mapping[str, np.ndarray], name: str, what: str) -> None:
    """torchvision itself accepts the weights: a strict load into its architecture."""
    model = torchvision_model(name)
    head = HEADS[name]
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}
    state.update({k: v for k, v in model.state_dict().items() if k.startswith(head)})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a torchvision version whose layout differs
        raise FedxrayError(
            f"{what}: torchvision's {name} refuses the weights ({_first_line(e)})",
            hint=_HINT.format(name=name),
        ) from None
