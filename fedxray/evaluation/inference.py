"""Running a trained model over a shard's images: class probabilities for predict/evaluate."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedxray import distributed
from fedxray.devices import resolve_device
from fedxray.errors import FedxrayError
from fedxray.models.inputs import images_to_tensor


def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    channels: int = 1,
    view: Callable | None = None,
) -> np.ndarray:
    """Softmax probabilities float32 [N, K] of ``model`` on images [N, H, W].

    ``view`` turns images into the model's input (the model's input view); by default the
    images scaled and normalised, with ``channels`` channels (the plan's ``in_channels``).
    Runs in eval mode without gradients, one batch at a time (so memory stays bounded for
    large shards); the model's device and train/eval mode are restored afterwards.
    Under torchrun each rank runs its contiguous share of the images and every rank gets
    all the rows, in the images' order (fedxray.distributed).
    """
    if batch_size < 1:
        raise FedxrayError(f"batch size must be positive, got {batch_size}")
    if len(images) == 0:
        raise FedxrayError("no images to predict")
    images = images[distributed.world().share(len(images))]
    n = len(images)
    dev = resolve_device(device)
    was_training = model.training
    home = next((t.device for t in model.parameters()), dev)
    model.to(dev).eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = images[start : start + batch_size]
                x = images_to_tensor(batch, channels) if view is None else view(batch)
                x = x.to(dev)
                logits = model(x)
                if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                    raise FedxrayError(
                        f"model output has shape {list(logits.shape)}, expected [batch, classes]"
                    )
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                if progress is not None:
                    progress(min(start + batch_size, n), n)
    finally:
        model.to(home).train(was_training)
    rows = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return distributed.gather_rows(rows).astype(np.float32, copy=False)
