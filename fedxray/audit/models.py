"""The torch side of the audit: logits of a model on a shard, and local reference models.

Reference models for offline LiRA are trained at the site on NON-member patients only, with
fedxray's own training loop run without DP in a throw-away folder (its ledger and checkpoints
are deleted afterwards; nothing is sent anywhere). Any callable ``(shard, seed) -> model``
can replace it, e.g. to train like the target was trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedxray.data.shard import Shard
from fedxray.data.split import subset
from fedxray.evaluation.inference import images_to_tensor, resolve_device
from fedxray.models.registry import build_model, load_numpy_state
from fedxray.training.settings import TrainSettings

Trainer = Callable[[Shard, int], nn.Module]
Progress = Callable[[int, int], None]
View = Callable[[np.ndarray], torch.Tensor]  # a model's input view (ModelSpec.input_view)


def model_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    channels: int = 1,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    view: View | None = None,
) -> np.ndarray:
    """Raw outputs float64 [N, classes] in eval mode (the model's mode is restored).

    ``view`` turns images into the model's input (default: scaled, ``channels`` channels).
    """
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                x = (images_to_tensor(batch, channels) if view is None else view(batch)).to(dev)
                out.append(model(x).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0))


@dataclass
class FedxrayTrainer:
    """Trains a reference model like a site does, without DP: ``epochs`` epochs from ``init``.

    ``epochs`` defaults to every epoch the target saw (rounds x local_epochs). The loop runs
    in a temporary folder (ledger, checkpoints) that is removed afterwards.
    """

    settings: TrainSettings
    init_state: dict[str, np.ndarray]
    epochs: int | None = None
    device: str = "cpu"

    def __call__(self, shard: Shard, seed: int) -> nn.Module:
        from fedxray.training.central import train_alone

        epochs = self.epochs or self.settings.rounds * self.settings.local_epochs
        settings = dataclasses.replace(self.settings, local_epochs=epochs, rounds=1)
        result = train_alone(
            self.init_state, shard, settings, name="audit-reference", device=self.device, seed=seed
        )
        s = self.settings
        model = build_model(s.arch, s.image_size, len(s.classes))
        load_numpy_state(model, {k: self.init_state[k] + result.delta[k] for k in result.delta})
        return model


def reference_logits(
    trainer: Trainer,
    non_members: Shard,
    non_member_units: np.ndarray,
    images: np.ndarray,
    units: np.ndarray,
    *,
    n_models: int,
    rng: np.random.Generator,
    channels: int = 1,
    device: str | torch.device = "cpu",
    view: View | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits [R, N, C], out_mask [R, N]) of ``n_models`` reference models on ``images``.

    Models come in pairs trained on complementary random halves of the non-member patients,
    so each non-member is left OUT of exactly half of the models (Carlini et al.'s design).
    ``non_member_units`` names the patient of each non-member image, ``units`` [N] that of
    each image in ``images``, in the same naming: a model trained on a patient is IN for them.
    """
    if n_models < 1:
        raise ValueError("need at least one reference model")
    keys = np.asarray(non_member_units).astype(str)
    if keys.shape != (len(non_members),):
        raise ValueError("need one unit name per non-member image")
    patients = np.unique(keys)
    if len(patients) < 2:
        raise ValueError("need at least two non-member patients to train reference models")
    units = np.asarray(units).astype(str)
    logits, out_mask = [], []
    half = None
    for r in range(n_models):
        if r % 2 == 0:
            half = rng.permutation(len(patients)) < len(patients) // 2
        chosen = patients[half if r % 2 == 0 else ~half]
        train = subset(non_members, np.flatnonzero(np.isin(keys, chosen)))
        model = trainer(train, int(rng.integers(2**62)))
        logits.append(model_logits(model, images, channels=channels, device=device, view=view))
        out_mask.append(~np.isin(units, chosen))
        if progress is not None:
            progress(r + 1, n_models)
    return np.stack(logits), np.stack(out_mask)
