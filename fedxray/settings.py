"""The federation's settings as typed data: every default is written here once.

A plan carries them as JSON (:meth:`FederationSettings.to_dict` / ``from_dict``); `fedxray
init` and `fedxray simulate` build them from flat options (:mod:`fedxray.settings_options`).
Messages name a setting the way people write it (``image-size``, ``min-sites``), and
:class:`SettingError` carries its path (``model.image_size``) so that a front end can say
which of its options sets it.

To add a setting: add a field with its default to one section below and, when some values
are impossible, a line to that section's ``check``. Plans written before it load with the
default of their model (:mod:`fedxray.model_defaults`); a flat option for it is one more entry in
:data:`OPTIONS`. Declare a setting that needs no per-model default with :func:`added_later`:
a plan writes it only when it differs from its default, so a plan that does not use it
stays the same, key for key, and older fedxray still reads it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from fedxray.errors import FedxrayError
from fedxray.geometry import DEFAULT_GEOMETRY, GEOMETRIES
from fedxray.keys import check_name
from fedxray.model_defaults import MODEL_DEFAULTS, PLUGIN_DEFAULTS, merged
from fedxray.secagg.fixedpoint import SecaggParams, check_capacity
from fedxray.secagg.server import ServerConfig

DEFAULT_CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral")
LOCAL_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")  # the sites' optimiser (training.optimizer)
PRIVACY_UNITS: tuple[str, ...] = ("auto", "patient", "image")  # dp.privacy_unit
BALANCED = "balanced"  # training.class_weights from each site's own class counts
MAX_AVERAGE_LAST = 100  # the coordinator keeps this many models in its server state


def added_later(default: Any) -> Any:
    """A setting added after plans were first written: written only when set (see above)."""
    return field(default=default, metadata={"added_later": True})


class SettingError(FedxrayError):
    """An impossible or malformed setting; ``setting`` is its path, e.g. ``dp.epsilon``."""

    def __init__(self, setting: str, message: str, hint: str | None = None):
        super().__init__(message, hint, option=option_for(setting))
        self.setting = setting


def label(path: str) -> str:
    """How messages name a setting: ``dp.max_grad_norm`` -> ``max-grad-norm``."""
    return path.rpartition(".")[2].replace("_", "-")


class _Section:
    """Parsing, printing and checking shared by every group of settings."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> Self:
        """Typed values from JSON: unknown keys are refused, missing ones take the default."""
        if not isinstance(data, Mapping):
            raise SettingError(where, f"settings {where} must be a mapping".replace("  ", " "))
        types = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            path = f"{where}.{unknown[0]}" if where else unknown[0]
            raise SettingError(path, f"unknown setting {path!r}")
        values = {}
        for name, raw in data.items():
            path = f"{where}.{name}" if where else name
            kind = types[name]
            if isinstance(kind, type) and issubclass(kind, _Section):
                values[name] = kind.from_dict(raw, path)
            else:
                values[name] = _typed(raw, kind, path)
        return cls(**values)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("added_later") and value == f.default:
                continue
            if isinstance(value, _Section):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def check(self) -> None:
        """Refuse impossible values with one clear line (a SettingError naming the setting)."""

    def flat(self, where: str = "") -> dict[str, Any]:
        """Every setting by its path (``dp.epsilon``), defaults included: what `verify` shows."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value, path = getattr(self, f.name), f"{where}{f.name}"
            if isinstance(value, _Section):
                out.update(value.flat(f"{path}."))
            else:
                out[path] = list(value) if isinstance(value, tuple) else value
        return out


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _typed(value: Any, kind: Any, path: str) -> Any:
    """``value`` as ``kind`` (bool, int, float, str, tuple[str, ...], tuple[float, ...] or a
    union of them with None); JSON's types only."""
    if isinstance(kind, types.UnionType):
        return _typed_union(value, typing.get_args(kind), path)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and number and _finite(value):
        return float(value)
    if kind is int and number and isinstance(value, int):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    items = typing.get_args(kind)[:1]
    if typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
        if items == (str,) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if items == (float,):
            return tuple(_typed(v, float, path) for v in value)
    name = _TYPE_NAMES.get(kind, "a list of numbers" if items == (float,) else "a list of names")
    if kind is float and number:
        name = "a finite number"  # nan or inf: JSON's types allow neither, options do
    raise SettingError(path, f"setting {label(path)} must be {name}, got {value!r}")


def _typed_union(value: Any, kinds: tuple, path: str) -> Any:
    if value is None and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is not type(None):
            try:
                return _typed(value, kind, path)
            except SettingError:
                pass
    raise SettingError(path, f"setting {label(path)} cannot be {value!r}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer no float can hold (JSON allows any)
        return False


def _require(ok: bool, path: str, message: str, hint: str | None = None) -> None:
    if not ok:
        raise SettingError(path, message, hint)


@dataclass(frozen=True)
class ModelSettings(_Section):
    # Issue 10's recipe (benchmarks/research/REPORT.md): fixed wavelet scattering features
    # and a linear head; MODEL_DEFAULTS holds the training that goes with each model.
    arch: str = "scatter-linear"
    image_size: int = 128
    in_channels: int = 1
    # A frozen-backbone model's pretrained weights (carried in the plan): the SHA-256 of
    # their tensors (fedxray.models.pretrained.tensor_digest) and of the file imported.
    backbone_sha256: str = added_later("")  # a plan without a backbone reads as before
    backbone_file_sha256: str = added_later("")
    geometry: str = added_later(DEFAULT_GEOMETRY)  # pad or stretch: fedxray.geometry

    def check(self) -> None:
        _require(16 <= self.image_size <= 1024, "model.image_size", "image-size must be 16 to 1024")
        _require(self.in_channels >= 1, "model.in_channels", "in-channels must be at least 1")
        _require(self.geometry in GEOMETRIES, "model.geometry", "geometry must be pad or stretch")
        for name in ("backbone_sha256", "backbone_file_sha256"):
            value = getattr(self, name)
            _require(value == "" or _is_sha256(value), f"model.{name}",
                     f"{label(name)} must be a SHA-256 in hex")  # fmt: skip

    @property
    def model_id(self) -> str:
        """What builds the model: the arch, and the digest of its backbone weights if any."""
        return f"{self.arch}@{self.backbone_sha256}" if self.backbone_sha256 else self.arch


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class TrainingSettings(_Section):
    # The recipe for the default model (scatter-linear): one centring round, then 10 rounds
    # x 5 full-batch steps of heavy-ball momentum (reset each round), learning rate 10 for
    # the weights and 2 for the biases (unit-norm features: the loss is at most 1-smooth).
    # Other models train with model_defaults.CNN_TRAINING unless the plan says otherwise.
    rounds: int = 11
    local_epochs: int = 5
    batch_size: int = 64  # expected (Poisson) batch size under DP, when not full_batch
    optimizer: str = "sgd"
    lr: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Per-class loss weights: one public weight per class, or "balanced" (from each site's
    # class counts: private, so only without DP); None weighs every image alike.
    class_weights: tuple[float, ...] | str | None = added_later(None)
    augment: bool = False  # random jitter of the training images (CNNs: model_defaults)
    # The update a site sends is the exponential moving average of its local iterates (this
    # decay per step, debiased); 0 sends the last iterate. Post-processing: no privacy cost.
    ema_decay: float = added_later(0.0)
    # Every unit in every step (q = 1, one step per local epoch) instead of Poisson batches.
    full_batch: bool = True
    bias_lr: float = 2.0  # the biases' learning rate; 0: lr
    # Round 1 releases the (DP) mean feature into the model's center instead of training
    # (fedxray.training.centering); models with a fixed front end and a linear head only.
    centering: bool = True

    def check(self) -> None:
        ok = self.rounds >= 1 and self.local_epochs >= 1
        _require(ok, "training.rounds", "rounds and local-epochs must be at least 1")
        ok = self.batch_size >= 1 and self.lr > 0
        _require(ok, "training.lr", "batch size and learning rate must be positive")
        _require(
            self.optimizer in LOCAL_OPTIMIZERS,
            "training.optimizer",
            f"optimizer must be one of {', '.join(LOCAL_OPTIMIZERS)}, got {self.optimizer!r}",
        )
        _require(0 <= self.momentum < 1, "training.momentum", "momentum must be in [0, 1)")
        _require(self.weight_decay >= 0, "training.weight_decay", "weight-decay must be >= 0")
        _require(0 <= self.ema_decay < 1, "training.ema_decay", "ema must be in [0, 1) (0: off)")
        cw = self.class_weights
        _require(
            cw in (None, BALANCED) or not isinstance(cw, str),
            "training.class_weights",
            f"class-weights must be one weight per class or {BALANCED!r}, got {cw!r}",
        )
        _require(
            not isinstance(cw, tuple) or all(w > 0 for w in cw),
            "training.class_weights",
            "class weights must be positive",
        )
        _require(self.bias_lr >= 0, "training.bias_lr", "bias-lr must be >= 0")
        _require(
            not self.centering or self.rounds >= 2,
            "training.centering",
            "centering takes round 1: the plan needs at least 2 rounds",
        )


@dataclass(frozen=True)
class DPSettings(_Section):
    enabled: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    allow_no_dp: bool = False
    # What one record of the privacy guarantee is: "auto" is the patient when the shard knows
    # patients (it does after prep), else the image.
    privacy_unit: str = added_later("auto")
    # Noise multiplier of the centring release (sensitivity 1): about one training step's
    # worth of the budget at the recipe's noise.
    centering_sigma: float = 5.0

    def check(self) -> None:
        _require(
            self.privacy_unit in PRIVACY_UNITS,
            "dp.privacy_unit",
            f"privacy-unit must be one of {', '.join(PRIVACY_UNITS)}, got {self.privacy_unit!r}",
        )
        if not self.enabled:
            return
        _require(0 < self.epsilon <= 100, "dp.epsilon", "epsilon must be in (0, 100]")
        _require(
            0 < self.delta < 1e-2,
            "dp.delta",
            "delta must be in (0, 0.01)",
            hint="use delta well below 1/patients",
        )
        _require(self.max_grad_norm > 0, "dp.max_grad_norm", "the clipping norm must be positive")
        _require(self.centering_sigma > 0, "dp.centering_sigma", "centering-sigma must be > 0")


@dataclass(frozen=True)
class SecaggSettings(_Section):
    frac_bits: int = 24
    clip: float = 4.0
    max_examples: int = 1_000_000
    strict: bool = False


@dataclass(frozen=True)
class ServerSettings(_Section):
    optimizer: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    # The published model is the mean of the last K global models (1: the last one). Sites
    # always train from the last global model itself. Post-processing: no privacy cost.
    average_last: int = added_later(1)

    def check(self) -> None:
        _require(
            1 <= self.average_last <= MAX_AVERAGE_LAST,
            "server.average_last",
            f"average-last must be 1 to {MAX_AVERAGE_LAST} (1: off)",
        )


@dataclass(frozen=True)
class FederationSettings(_Section):
    """Everything a plan fixes about training, privacy and aggregation."""

    model: ModelSettings = field(default_factory=ModelSettings)
    classes: tuple[str, ...] = DEFAULT_CLASSES
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dp: DPSettings = field(default_factory=DPSettings)
    secagg: SecaggSettings = field(default_factory=SecaggSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    min_sites: int = 3

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> Self:
        """As any section, except that settings absent from ``data`` take the defaults of
        its model (:data:`MODEL_DEFAULTS`) before the general ones."""
        if isinstance(data, Mapping) and not where:
            model = data.get("model")
            arch = model.get("arch") if isinstance(model, Mapping) else None
            arch = arch if isinstance(arch, str) else None  # a wrong type is refused below
            data = merged(MODEL_DEFAULTS.get(arch or ModelSettings.arch, PLUGIN_DEFAULTS), data)
        return super().from_dict(data, where)

    def validate(self, n_sites: int) -> None:
        """At init: :meth:`check`, and the model can be built for these classes."""
        from fedxray.models.registry import check_model  # heavy: builds the model's shapes

        self.check(n_sites)
        check_model(
            self.model,
            len(self.classes),
            centering=self.training.centering,
            augment=self.training.augment,
        )

    def check(self, n_sites: int | None = None) -> None:
        """Refuse impossible values and combinations, cheaply (no model is built): at init,
        and again whenever a plan is loaded. With ``n_sites``, also what depends on the
        federation's size."""
        for section in (self.model, self.training, self.dp, self.server):
            section.check()
        ok = len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)
        _require(ok, "classes", "at least two distinct class names are needed")
        for c in self.classes:
            check_name(c)
        self._check_class_weights()
        _require(
            self.min_sites >= 2, "min_sites", "min-sites must be at least 2 (3 is the safe default)"
        )
        self.server_config()
        params = self.secagg_params()
        if n_sites is None:
            return
        _require(
            n_sites >= self.min_sites,
            "min_sites",
            f"the plan names {n_sites} site(s) but min-sites is {self.min_sites}",
        )
        check_capacity(params, n_sites)

    def _check_class_weights(self) -> None:
        cw = self.training.class_weights
        if isinstance(cw, tuple):
            _require(
                len(cw) == len(self.classes),
                "training.class_weights",
                f"class-weights needs one weight per class ({len(self.classes)}), got {len(cw)}",
            )
        _require(
            cw != BALANCED or not self.dp.enabled,
            "training.class_weights",
            "class-weights 'balanced' uses each site's private class counts: not with DP",
            hint="give one public weight per class, e.g. 1,2,2",
        )

    def secagg_params(self) -> SecaggParams:
        """The secure-aggregation parameters, checked by the secure-aggregation layer."""
        s = self.secagg
        return SecaggParams.from_settings({**s.to_dict(), "min_sites": self.min_sites})

    def server_config(self) -> ServerConfig:
        """The server optimiser's parameters, checked by the secure-aggregation layer."""
        return ServerConfig.from_settings(self.server.to_dict())  # it ignores average_last

    def warnings(self) -> list[str]:
        """Legal but weaker choices that the coordinator should hear about."""
        out = []
        if self.min_sites < 3:
            out.append(
                "min-sites 2: when only two sites contribute, each can recover the other's "
                "update from the next model; only differential privacy then protects it"
            )
        if not self.dp.enabled or self.dp.allow_no_dp:
            out.append("non-private (no DP) updates are accepted in this federation")
        if self.dp.enabled and self.dp.privacy_unit == "image":
            out.append(
                "privacy unit image: a patient with several images is protected less than "
                "the epsilon says"
            )
        return out


# Flat options (as `fedxray init` and `fedxray simulate` name them) -> setting path.
OPTIONS: dict[str, str] = {
    "model": "model.arch",
    "image_size": "model.image_size",
    "geometry": "model.geometry",
    "classes": "classes",
    "rounds": "training.rounds",
    "local_epochs": "training.local_epochs",
    "batch_size": "training.batch_size",
    "lr": "training.lr",
    "epsilon": "dp.epsilon",
    "delta": "dp.delta",
    "full_batch": "training.full_batch",
    "bias_lr": "training.bias_lr",
    "centering": "training.centering",
    "clip_norm": "dp.max_grad_norm",
    "allow_no_dp": "dp.allow_no_dp",
    "privacy_unit": "dp.privacy_unit",
    "class_weights": "training.class_weights",
    "augment": "training.augment",
    "ema": "training.ema_decay",
    "average_last": "server.average_last",
    "strict": "secagg.strict",
    "server_opt": "server.optimizer",
    "server_lr": "server.lr",
    "min_sites": "min_sites",
}


def option_for(setting: str) -> str | None:
    """The flat option that sets ``setting`` (a path such as ``dp.epsilon``), if any."""
    return next((o for o, path in OPTIONS.items() if path == setting), None)


def make_settings(overrides: Mapping[str, Any] | None = None) -> FederationSettings:
    """Settings from a nested mapping of the values that differ from the defaults."""
    return FederationSettings.from_dict(overrides or {})
