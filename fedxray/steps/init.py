"""The `init` step: the coordinator's key and card, the signed plan, the first global model."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from fedxray import keys
from fedxray.cards import card_bytes, card_from_bytes
from fedxray.errors import FedxrayError
from fedxray.filenames import round_file
from fedxray.fsio import Undo, check_writable, read_input, write_atomic
from fedxray.modelfile import build_model_artifact
from fedxray.models.backbone import backbone_of
from fedxray.models.pretrained import import_backbone
from fedxray.models.registry import build_model, state_to_numpy
from fedxray.plan import create_plan, plan_from_bytes
from fedxray.settings import FederationSettings
from fedxray.steps.identity import Identity, coordinator_identity, save_identity
from fedxray.training.dp_engine import private_layers

COORDINATOR = "coordinator"


@dataclass(frozen=True)
class InitResult:
    plan_path: Path
    model_path: Path
    coordinator: Identity
    plan_summary: dict
    pretrained: dict | None
    warnings: list[str]

    def to_dict(self) -> dict:
        s = self.plan_summary
        return {
            "plan": str(self.plan_path),
            "model": str(self.model_path),
            "coordinator_key": str(self.coordinator.key_path),
            "coordinator_card": str(self.coordinator.card_path),
            "key_created": self.coordinator.created,
            "federation": s["federation"],
            "coordinator_fingerprint": s["coordinator"]["fingerprint"],
            "sites": s["sites"],
            "settings": s["settings"],
            "pretrained": self.pretrained,
            "warnings": self.warnings,
        }


def load_pretrained(
    path: Path, layout: dict[str, tuple[tuple[int, ...], str]]
) -> tuple[dict, dict]:
    """Read pretrained weights from a safetensors file (never pickle) and fit them to the model.

    Tensors are taken by name where the shape matches; a 3-channel first convolution is summed
    to one channel for greyscale input. Returns (weights, report).
    """
    data = read_input(path, "pretrained weights")
    try:
        src = st_load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise FedxrayError(f"{path} is not a readable safetensors file ({e})") from None
    weights, adapted, skipped = {}, [], []
    for name, (shape, _) in layout.items():
        t = src.get(name)
        if t is None:
            continue
        t = np.asarray(t, dtype=np.float32)
        if (
            t.shape != tuple(shape)
            and t.ndim == 4
            and len(shape) == 4
            and shape[1] == 1
            and t.shape[1] == 3
        ):
            t = t.sum(axis=1, keepdims=True)
            adapted.append(name)
        if t.shape != tuple(shape):
            skipped.append(name)
            continue
        if not np.isfinite(t).all():
            raise FedxrayError(f"{path}: tensor {name} has non-finite values")
        weights[name] = t
    if not weights:
        raise FedxrayError(
            f"no tensor in {path} matches the plan's model",
            hint="use the model's tensor names (see: fedxray inspect on a .model file)",
        )
    report = {
        "file": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "loaded": len(weights),
        "of": len(layout),
        "adapted_to_greyscale": adapted,
        "shape_mismatch": skipped,
    }
    return weights, report


def initialise(
    name: str,
    out_dir: Path,
    site_card_files: list[Path],
    settings: FederationSettings,
    *,
    init_weights: Path | None = None,
    seed: int | None = None,
    force: bool = False,
    federation_id: str | None = None,
) -> InitResult:
    """Create the federation in ``out_dir``. Nothing is written before every input and
    setting passed its checks, and a failed init leaves nothing behind: no key, card, model
    or plan of its own (a coordinator key that was there before is kept and used)."""
    keys.check_name(name)
    if not site_card_files:
        raise FedxrayError("no site cards given", hint="name the sites' .pub files")
    sites = [card_from_bytes(read_input(p, "site card"), what=str(p)) for p in site_card_files]
    plan_path, model_path = out_dir / f"{name}.plan", out_dir / round_file("model", 1)
    if out_dir.exists():
        for p in (plan_path, model_path):
            check_writable(p, force=force)
    # Everything is built and checked in memory first; only then is anything written, and a
    # failure while writing removes what this run wrote (a key that existed stays).
    coordinator = coordinator_identity(COORDINATOR, out_dir)
    ident = coordinator.identity
    settings, backbone_weights = _with_backbone(settings, init_weights)
    plan_data = create_plan(
        name, ident, sites, settings, backbone=backbone_weights, federation_id=federation_id
    )
    plan = plan_from_bytes(plan_data)

    m = plan.settings.model
    model = build_model(
        m.model_id, m.image_size, len(plan.settings.classes), m.in_channels, seed=seed
    )
    if plan.settings.dp.enabled:
        _check_private_training(model, m.arch)
    weights = state_to_numpy(model)
    pretrained = None
    if backbone_weights is not None:
        pretrained = {
            "file": str(init_weights),
            "backbone": backbone_of(m.arch),
            "sha256": m.backbone_sha256,
            "file_sha256": m.backbone_file_sha256,
            "frozen": True,
        }
    elif init_weights is not None:
        loaded, pretrained = load_pretrained(init_weights, plan.model_layout())
        weights.update(loaded)
    provenance = {
        "round": 0,
        "init": "pretrained" if pretrained else "random",
        "pretrained": pretrained,
    }
    model = build_model_artifact(
        plan,
        round_number=1,
        weights=weights,
        parent=plan.digest,
        provenance=provenance,
        signer=ident,
    )
    with Undo() as undo:
        undo.folder(out_dir)
        if coordinator.created:
            save_identity(coordinator, undo)
        elif not coordinator.card_path.exists():
            write_atomic(undo.file(coordinator.card_path), card_bytes(ident))
        # The plan goes last: a half-finished init never leaves a plan without its model.
        write_atomic(undo.file(model_path), model.data, force=force)
        write_atomic(undo.file(plan_path), plan_data, force=force)
    return InitResult(
        plan_path,
        model_path,
        coordinator,
        plan.summary(),
        pretrained,
        plan.settings.warnings(),
    )


def _with_backbone(
    settings: FederationSettings, init_weights: Path | None
) -> tuple[FederationSettings, dict | None]:
    """For a frozen-backbone model: the imported weights, and the settings that pin them."""
    name = backbone_of(settings.model.arch)
    if name is None:
        if init_weights is not None and init_weights.suffix.lower() in (".pth", ".pt"):
            raise FedxrayError(
                f"{init_weights}: a torchvision .pth file starts a frozen-backbone model only",
                hint="choose the model resnet18-frozen or densenet121-frozen",
                option="model",
            )
        return settings, None
    if init_weights is None:
        raise FedxrayError(
            f"{settings.model.arch} needs pretrained weights",
            hint=f"give torchvision's {name} state dict (a .pth or .safetensors file)",
            option="init",
        )
    found = import_backbone(init_weights, name)
    model = dataclasses.replace(
        settings.model, backbone_sha256=found.digest, backbone_file_sha256=found.file_sha256
    )
    return dataclasses.replace(settings, model=model), found.tensors


def _check_private_training(model, arch: str) -> None:
    """The plan asks for DP-SGD: every trainable layer must be one the DP engine can clip."""
    try:
        private_layers(model)
    except FedxrayError as e:
        raise FedxrayError(
            f"model {arch} cannot be trained with differential privacy: {e.message}",
            hint="use layers the DP engine supports (Conv2d, Linear, GroupNorm)",
        ) from None
