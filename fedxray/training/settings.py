"""Training settings: the plan's model, training and DP settings, plus the site's own cap."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from fedxray.errors import FedxrayError
from fedxray.models.registry import model_names
from fedxray.settings import LOCAL_OPTIMIZERS as OPTIMIZERS
from fedxray.settings import FederationSettings

# Plan settings that training knows under another name; the rest keep their names.
_FROM_PLAN = {"dp.epsilon": "target_epsilon"}


@dataclass(frozen=True)
class TrainSettings:
    arch: str
    image_size: int
    classes: tuple[str, ...]
    local_epochs: int
    rounds: int
    batch_size: int  # expected (Poisson) batch size under DP
    lr: float
    target_epsilon: float
    delta: float
    max_grad_norm: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    local_epsilon_cap: float | None = None  # a site may be stricter than the plan
    privacy_unit: str = "auto"  # auto (patient when known) | patient | image
    # Per-class loss weights from the plan (public), None, or "balanced" (from local class
    # counts: a non-private statistic, so only allowed for --no-dp baselines).
    class_weights: tuple[float, ...] | str | None = None
    augment: bool = False
    ema_decay: float = 0.0  # the update is the EMA of the local iterates (0: the last one)
    full_batch: bool = False  # every unit every step (q = 1, one step per local epoch)
    bias_lr: float = 0.0  # learning rate of the bias vectors; 0: lr
    # Round 1 releases the mean feature (noise centering_sigma under DP) into the model's
    # ``center`` instead of training (fedxray.training.centering).
    centering: bool = False
    centering_sigma: float = 5.0
    physical_batch_size: int = 64  # memory bound only: does not change the maths

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if isinstance(self.class_weights, list | tuple):
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> FedxrayError:
            return FedxrayError(f"invalid training settings: {msg}")

        if self.arch.partition("@")[0] not in model_names():
            raise bad(f"unknown arch {self.arch!r} (choose {', '.join(model_names())})")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise bad("need at least two distinct classes")
        for name in ("image_size", "local_epochs", "rounds", "batch_size", "physical_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "target_epsilon", "max_grad_norm"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise bad(f"{name} must be a positive number, got {v!r}")
        if not 0 < self.delta < 1:
            raise bad(f"delta must be in (0, 1), got {self.delta!r}")
        if not (math.isfinite(self.centering_sigma) and self.centering_sigma > 0):
            raise bad(f"centering_sigma must be a positive number, got {self.centering_sigma!r}")
        if self.centering and self.rounds < 2:
            raise bad("centering takes round 1: the plan needs at least 2 rounds")
        if not (math.isfinite(self.bias_lr) and self.bias_lr >= 0):
            raise bad(f"bias_lr must be a number >= 0, got {self.bias_lr!r}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise bad("momentum must be in [0, 1) and weight_decay >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise bad(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.local_epsilon_cap is not None and not self.local_epsilon_cap > 0:
            raise bad("local epsilon cap must be positive")
        if not 0 <= self.ema_decay < 1:
            raise bad("ema_decay must be in [0, 1)")
        if self.privacy_unit not in ("auto", "patient", "image"):
            raise bad("privacy unit must be auto, patient or image")
        cw = self.class_weights
        if isinstance(cw, str):
            if cw != "balanced":
                raise bad(f"class_weights must be a list, 'balanced' or null, got {cw!r}")
        elif cw is not None and (
            len(cw) != len(self.classes) or not all(math.isfinite(w) and w > 0 for w in cw)
        ):
            raise bad("class_weights needs one positive weight per class")

    @classmethod
    def from_plan(
        cls, plan: FederationSettings, local_epsilon_cap: float | None = None
    ) -> TrainSettings:
        """The plan's settings that training uses: every field of the plan's model, training
        and dp sections whose name (or renamed form) is a field here."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict = {"classes": plan.classes, "local_epsilon_cap": local_epsilon_cap}
        for section in ("model", "training", "dp"):
            part = getattr(plan, section)
            for f in dataclasses.fields(part):  # every field: to_dict leaves some defaults out
                name = _FROM_PLAN.get(f"{section}.{f.name}", f.name)
                if name in known:
                    values[name] = getattr(part, f.name)
        values["arch"] = plan.model.model_id  # a frozen backbone: its weights' digest too
        return cls(**values)

    @property
    def epsilon_budget(self) -> float:
        """The budget this site enforces: the plan's target or the stricter local cap."""
        if self.local_epsilon_cap is None:
            return float(self.target_epsilon)
        return float(min(self.target_epsilon, self.local_epsilon_cap))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        if isinstance(self.class_weights, tuple):
            d["class_weights"] = list(self.class_weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FedxrayError(f"invalid training settings: unknown field {unknown[0]!r}")
        try:
            return cls(**d)
        except TypeError as e:
            raise FedxrayError(f"invalid training settings: {e}") from None

    def fingerprint(self) -> str:
        """Hash of every setting that changes the training computation."""
        d = self.to_dict()
        d.pop("physical_batch_size")  # memory only
        if not d["ema_decay"]:
            d.pop("ema_decay")  # off: the same fingerprint as before the setting existed
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
