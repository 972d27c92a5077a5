"""The ranks other than 0 of a torchrun job: train one round as rank 0 says
(fedxray.training.ranks has the messages and the rank-0 side)."""

from __future__ import annotations

from fedxray import distributed
from fedxray.models.registry import build_model
from fedxray.training import checkpoint, loop
from fedxray.training.sampling import plan_sampling


def follow_round(shard, device) -> None:
    """A rank other than 0: train with rank 0, epoch by epoch, until it says done."""
    message = distributed.broadcast()
    if message["kind"] != "start":  # abort
        distributed.settle()
        return
    settings, sigma = message["settings"], message["sigma"]
    dp = sigma is not None
    model = build_model(settings.arch, settings.image_size, len(settings.classes)).to(device)
    optimizer = loop._optimizer(model, settings)
    sampling = plan_sampling(shard, settings, dp)
    weights = loop._class_weights(settings, shard, dp)
    runner = loop._Epochs(model, optimizer, shard, settings, sampling, sigma, weights, device)
    try:
        while (message := distributed.broadcast())["kind"] == "epoch":
            checkpoint.load_training_state(message["state"], model, optimizer)
            runner.run(message["seed"], lambda i: None)
    finally:
        runner.close()
    distributed.settle()  # done or abort, as rank 0 does
