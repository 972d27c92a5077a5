"""The server step: apply the averaged update to the global model (FedAvg, momentum, FedAdam).

The sites send deltas (local weights minus global weights); ``delta`` below is their weighted
mean. FedAvg: w += lr * delta. Server momentum (FedAvgM, Hsu et al. 2019): m = mu * m + delta;
w += lr * m. FedAdam (Reddi et al., ICLR 2021): m = b1 m + (1 - b1) delta,
v = b2 v + (1 - b2) delta^2, w += lr * m / (sqrt(v) + tau). State tensors are named
``m/<tensor>`` and ``v/<tensor>``; missing ones start at zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedxray.errors import FedxrayError

OPTIMIZERS = ("fedavg", "momentum", "fedadam")
_SLOTS = {"fedavg": (), "momentum": ("m",), "fedadam": ("m", "v")}


@dataclass(frozen=True)
class ServerConfig:
    optimizer: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    @classmethod
    def from_settings(cls, settings: Mapping) -> ServerConfig:
        """Read ``plan.server``; unknown keys are ignored, bad values raise FedxrayError."""
        opt = settings.get("optimizer", "fedavg")
        if opt not in OPTIMIZERS:
            raise FedxrayError(
                f"unknown server optimiser {opt!r}", hint=f"choose one of {', '.join(OPTIMIZERS)}"
            )
        try:
            values = {
                k: float(settings.get(k, getattr(cls, k)))
                for k in ("lr", "momentum", "beta1", "beta2", "tau")
            }
        except (TypeError, ValueError):
            raise FedxrayError("the plan's server settings are not numbers") from None
        if not all(math.isfinite(v) for v in values.values()):
            raise FedxrayError("the plan's server settings must be finite numbers")
        if values["lr"] <= 0:
            raise FedxrayError("the server learning rate must be positive")
        for k in ("momentum", "beta1", "beta2"):
            if not 0 <= values[k] < 1:
                raise FedxrayError(f"server {k} must be in [0, 1)")
        if values["tau"] <= 0:
            raise FedxrayError("server tau must be positive")
        return cls(optimizer=opt, **values)

    @property
    def slots(self) -> tuple[str, ...]:
        return _SLOTS[self.optimizer]


def state_names(config: ServerConfig, tensor_names) -> list[str]:
    return [f"{slot}/{name}" for slot in config.slots for name in sorted(tensor_names)]


def server_step(
    weights: Mapping[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    config: ServerConfig,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Return (new weights as float32, new optimiser state as float32).

    Tensors of ``weights`` absent from ``delta`` are copied unchanged.
    """
    new_weights: dict[str, np.ndarray] = {}
    new_state: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if name not in delta:
            new_weights[name] = np.array(w, dtype=np.float32)
            continue
        d = np.asarray(delta[name], dtype=np.float64)
        if d.shape != np.shape(w):
            raise ValueError(f"delta {name} has shape {d.shape}, weights {np.shape(w)}")

        def prev(slot: str, name: str = name, d: np.ndarray = d) -> np.ndarray:
            s = state.get(f"{slot}/{name}")
            return np.zeros_like(d) if s is None else np.asarray(s, dtype=np.float64)

        if config.optimizer == "fedavg":
            step = d
        elif config.optimizer == "momentum":
            m = config.momentum * prev("m") + d
            new_state[f"m/{name}"] = m
            step = m
        else:
            m = config.beta1 * prev("m") + (1 - config.beta1) * d
            v = config.beta2 * prev("v") + (1 - config.beta2) * d * d
            new_state[f"m/{name}"], new_state[f"v/{name}"] = m, v
            step = m / (np.sqrt(v) + config.tau)
        new_weights[name] = (np.asarray(w, dtype=np.float64) + config.lr * step).astype(np.float32)
    missing = set(delta) - set(weights)
    if missing:
        raise ValueError(f"delta has tensors the model lacks: {sorted(missing)[:3]}")
    return new_weights, {k: v.astype(np.float32) for k, v in new_state.items()}
