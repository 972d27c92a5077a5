"""One site's local training for one federation round (``fedxray train-local``'s library).

Order of events per epoch: record the epoch and its seed in the ledger and save it (it is
counted before any of its results exist), train the epoch, save its checkpoint, mark it done
in the ledger. Re-running a round after a crash continues from the last checkpoint and
replays an unfinished epoch with its recorded seed (training/replay.py); re-running a
finished round returns the same update again without training (nothing new is spent).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedxray import distributed
from fedxray.data.shard import Shard
from fedxray.devices import resolve_device
from fedxray.errors import FedxrayError, ProtocolRefusal
from fedxray.models.frontend import FrontEndModel
from fedxray.models.registry import build_model, get_spec, load_numpy_state, state_to_numpy
from fedxray.training import budget, centering, checkpoint, ranks, replay
from fedxray.training.augment import augment, skip_augment
from fedxray.training.averaging import attach_ema, averaged_state
from fedxray.training.dp_engine import DPEngine, NoiseGenerator, PrivateOptimizer
from fedxray.training.features import Progress, shard_features
from fedxray.training.ledger import DONE, Ledger, SiteLedger, ledger_lock
from fedxray.training.sampling import PATIENT, plan_sampling
from fedxray.training.settings import TrainSettings


@dataclass
class RoundResult:
    delta: dict[str, np.ndarray]  # trained - global, float32, same names as the global state
    num_examples: int
    num_patients: int
    epsilon: float  # site's running epsilon after this round (inf without DP)
    privacy_delta: float | None
    noise_multiplier: float | None
    privacy_unit: str | None
    dp: bool
    losses: list[float]  # mean training loss per epoch (site-local, not privatised)
    seconds: float
    steps: int  # optimisation steps taken in this call
    resumed_from_epoch: int = 0  # epochs restored from a checkpoint
    replayed_epochs: int = 0  # unfinished epochs run again with their recorded seeds
    site_epsilon: float | None = None  # the site's total over all federations
    warnings: list[str] = field(default_factory=list)


def train_round(
    global_state: dict[str, np.ndarray],
    shard: Shard,
    settings: TrainSettings,
    *,
    ledger_path: str | Path,
    federation_id: str,
    round_number: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    dp: bool = True,
    checkpoint_dir: str | Path | None = None,
    features_dir: str | Path | None = None,
    progress: Progress | None = None,
    features_progress: Progress | None = None,
    federation_name: str | None = None,
    before_spending: Callable[[SiteLedger], None] | None = None,
) -> RoundResult:
    """Train ``settings.local_epochs`` epochs from ``global_state`` on ``shard``.

    Each epoch's randomness (sampling, augmentation, noise) comes from a seed recorded in the
    ledger before it runs: fresh OS entropy, or with ``seed`` (reproducible experiments only:
    a seed known outside the site makes the noise public) derived from it. A rerun after a
    crash replays unfinished epochs with their recorded seeds and counts them once.
    ``before_spending`` is called with the ledger before the run counts anything.
    A model with a fixed front end trains on the shard's features, cached in ``features_dir``
    (computed once; ``features_progress`` counts images, ``progress`` training steps).
    Raises BudgetExceededError (nothing trained, nothing written) when this round would take
    the federation's epsilon past its target or local cap, or the site's total past its budget.
    """
    started = time.perf_counter()
    _check_inputs(shard, settings, round_number)
    dev = resolve_device(device)
    weights = _class_weights(settings, shard, dp)
    sampling = plan_sampling(shard, settings, dp)
    statistics = centering.is_statistics_round(settings, round_number)
    with ledger_lock(ledger_path):
        ledger = Ledger.load(ledger_path, federation_id)
        ledger.name = ledger.name or federation_name
        sigma = budget.noise_multiplier(ledger, settings, sampling, round_number, dp)
        if statistics:  # one release of the mean feature, not training (training/centering)
            sampling = centering.release_sampling(sampling)
            sigma = settings.centering_sigma if dp else None
        total_epochs = 1 if statistics else settings.local_epochs
        epoch_steps = sampling.steps_per_epoch
        model = build_model(settings.arch, settings.image_size, len(settings.classes))
        load_numpy_state(model, global_state)
        model.to(dev)
        optimizer = _optimizer(model, settings)
        attach_ema(optimizer, settings.ema_decay)  # kept in the optimiser's state: resumable
        inputs = {
            "global_sha256": checkpoint.state_hash(global_state),
            "settings_sha256": settings.fingerprint(),
            "shard_sha256": checkpoint.shard_hash(shard),
            "dp": dp,
            "noise_multiplier": sigma,
        }

        def check(epochs: int) -> None:
            if dp:
                budget.check_budget(ledger, settings, sigma, sampling, epochs, round_number)

        rounds = replay.RoundReplay(
            ledger, round_number, inputs, steps=epoch_steps, sample_rate=sampling.sample_rate,
            seed=seed, save=_saver(ledger), check_extra=lambda: check(1),
        )  # fmt: skip
        keys = {"federation_id": federation_id, "round": int(round_number), **inputs,
                "ledger_id": ledger.site.ledger_id}  # fmt: skip
        resume = checkpoint.Resume(checkpoint_dir, federation_id, round_number, keys)
        done, losses = _restore(resume, rounds, model, optimizer)
        state = checkpoint.tensors_hash(checkpoint.training_tensors(model, optimizer))
        check(rounds.fresh_epochs(done + 1, total_epochs, state))
        if done < total_epochs:
            resume.make_folder()
        if done < total_epochs or not ledger.round_finished(round_number):
            _open_for_spending(ledger, before_spending)
        feats = None
        if isinstance(model, FrontEndModel) and done < total_epochs:
            feats = shard_features(
                model.front_end, shard.images, features_dir, dev, features_progress
            )
        if statistics:
            epoch_runner = centering.Release(model, feats, sampling.sampler, sigma)
        else:
            epoch_runner = _Epochs(
                model, optimizer, shard, settings, sampling, sigma, weights, dev, feats
            )
        replayed = 0
        progress = None if statistics else progress  # a release: no epochs of training
        for epoch in range(done + 1, total_epochs + 1):
            first = (epoch - 1) * epoch_steps

            def step_done(i: int, first: int = first) -> None:
                if progress is not None and i < epoch_steps:  # the epoch's last is below
                    progress(first + i, total_epochs * epoch_steps)

            entry, loss, tensors, result, replaying = _epoch(
                rounds, epoch_runner, optimizer, epoch, state, step_done
            )
            replayed += replaying
            losses.append(loss)
            # The ledger says "done" only once the epoch's checkpoint is safely written.
            resume.save(epoch, losses, tensors, rounds.chain_ids(epoch))
            rounds.done(entry, result)
            state = result
            if progress is not None:
                progress(epoch * epoch_steps, total_epochs * epoch_steps)
        epoch_runner.close()
        rounds.finish()
        eps = ledger.epsilon()

    if settings.ema_decay:  # the update is the average of the iterates: post-processing
        model.load_state_dict(averaged_state(model, optimizer))
    trained = state_to_numpy(model)
    delta = {k: (trained[k] - np.asarray(global_state[k], np.float32)) for k in trained}
    return RoundResult(
        delta=delta,
        num_examples=len(shard),
        num_patients=shard.num_patients,
        epsilon=eps,
        privacy_delta=settings.delta if dp else None,
        noise_multiplier=sigma,
        privacy_unit=sampling.unit if dp else None,
        dp=dp,
        losses=[float(v) for v in losses],
        seconds=time.perf_counter() - started,
        steps=(total_epochs - done) * epoch_steps,
        resumed_from_epoch=done,
        replayed_epochs=replayed,
        site_epsilon=ledger.site.cached_total(),
        warnings=[*sampling.warnings, *budget.calibration_notes(ledger), *rounds.warnings()],
    )


def _saver(ledger: Ledger) -> Callable[[], None]:
    """Saves the ledger, with the site's total kept in it so that showing it is instant."""

    def save() -> None:
        ledger.site.cache_total()
        ledger.save()

    return save


def _open_for_spending(ledger: Ledger, before_spending) -> None:
    """Before the first epoch counts: a new ledger is written (with no epochs yet), then the
    caller notes its id (the site record). A crash between the steps forgets nothing."""
    if not ledger.site.exists:
        ledger.save()
    if before_spending is not None:
        before_spending(ledger.site)


def _epoch(rounds: replay.RoundReplay, runner: _Epochs, optimizer, epoch: int, state: str,
           step_done):  # fmt: skip
    """Run ``epoch`` from the state hashing to ``state``: replayed with its recorded seed, or
    as a new, counted record. (record, loss, state tensors, their hash, whether replayed)."""
    model = runner.model
    entry, replaying = rounds.begin(epoch, state)
    while True:
        # A replay of an epoch that had finished must give its recorded result again.
        check = replaying and entry["status"] == DONE
        back = checkpoint.snapshot(model, optimizer) if check else None
        loss = runner.run(entry["seed"], step_done)
        tensors = checkpoint.training_tensors(model, optimizer)
        result = checkpoint.tensors_hash(tensors)
        if not check or rounds.replay_matches(entry, result):
            return entry, loss, tensors, result, replaying
        # Not the result it gave before (non-deterministic hardware): never use it.
        checkpoint.load_training_state(back, model, optimizer)
        rounds.recount(entry, "replaying it gave another result than the first time")
        entry, replaying = rounds.fresh(epoch, state), False


def _restore(resume: checkpoint.Resume, rounds: replay.RoundReplay, model, optimizer):
    """(epochs done, losses) from a checkpoint that the ledger's records account for."""
    found = resume.find(rounds.chain_ids)
    if found is None:
        return 0, []
    epoch, losses, tensors = found
    if not rounds.adopt(epoch, checkpoint.tensors_hash(tensors)):
        return 0, []
    checkpoint.load_training_state(tensors, model, optimizer)
    return epoch, losses


# -- checks ----------------------------------------------------------------------------------
def _check_inputs(shard: Shard, settings: TrainSettings, round_number: int) -> None:
    if len(shard) == 0:
        raise FedxrayError("the shard is empty: nothing to train on")
    if list(shard.classes) != list(settings.classes):
        raise FedxrayError(
            f"shard classes {list(shard.classes)} differ from the plan's {list(settings.classes)}"
        )
    if shard.image_size != settings.image_size or shard.images.shape[1:] != (
        settings.image_size,
        settings.image_size,
    ):
        raise FedxrayError(
            f"shard images are {shard.images.shape[1]} px, the plan trains at "
            f"{settings.image_size} px",
            hint="prepare the shard again with the plan's image size",
        )
    labels = np.asarray(shard.labels)
    if labels.min() < 0 or labels.max() >= len(settings.classes):
        raise FedxrayError("shard labels are out of range for the plan's classes")
    if not isinstance(round_number, int) or round_number < 1:
        raise FedxrayError(f"round number must be a positive integer, got {round_number!r}")
    if round_number > settings.rounds:
        raise ProtocolRefusal(f"round {round_number} is beyond the plan's {settings.rounds} rounds")


def _class_weights(settings: TrainSettings, shard: Shard, dp: bool) -> torch.Tensor | None:
    cw = settings.class_weights
    if cw is None:
        return None
    if cw == "balanced":
        if dp:
            raise FedxrayError(
                "class_weights 'balanced' uses private class counts: only allowed without DP",
                hint="put per-class weights in the plan instead",
            )
        counts = np.bincount(np.asarray(shard.labels), minlength=len(settings.classes))
        w = len(shard) / (len(counts) * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32)
    return torch.tensor(cw, dtype=torch.float32)


# -- model and optimiser state ------------------------------------------------------------
def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params: list = [p for p in model.parameters() if p.requires_grad]
    if settings.bias_lr:  # a group of its own for the biases (the plan's bias_lr)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        biases = [p for n, p in named if n.rpartition(".")[2] == "bias"]
        others = [p for n, p in named if n.rpartition(".")[2] != "bias"]
        params = [{"params": others}, {"params": biases, "lr": settings.bias_lr}]
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


# -- epochs -----------------------------------------------------------------------------------
class _Batches:
    """Turns image indices into model inputs (the model's input view, augmented) and labels.

    A model with a fixed front end (FrontEndModel) trains its head on the shard's features,
    computed once (``features``) and never augmented."""

    def __init__(self, shard, device, generator, settings, features=None):
        self.shard, self.device, self.generator = shard, device, generator
        self.labels = torch.from_numpy(np.asarray(shard.labels, dtype=np.int64))
        self.autocast = device.type == "cuda"
        self.view = get_spec(settings.arch).input_view(1)
        self.features = features

    def __call__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.features is not None:
            x = torch.from_numpy(self.features[idx]).to(self.device)
        else:
            jitter = None if self.generator is None else lambda x: augment(x, self.generator)
            x = self.view(self.shard.images[idx], self.device, jitter)
        return x, self.labels[idx].to(self.device)

    def skip(self, count: int) -> None:
        """Advance the augmentation past ``count`` images that another rank augments."""
        if self.generator is not None:
            skip_augment(self.generator, count)

    def forward(self, model, x):
        net = model.head if self.features is not None else model
        if self.autocast:  # mixed precision on GPU only
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return net(x)
        return net(x)


def _losses(logits, y, weights) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    if weights is not None:
        loss = loss * weights.to(loss.device)[y]
    return loss


class _Epochs:
    """Runs one epoch at a time: the loop of ordinary training, with the private step (or a
    plain one) and each epoch's randomness drawn from its own seeds."""

    def __init__(self, model, optimizer, shard, settings, sampling, sigma, weights, device,
                 features=None):  # fmt: skip
        self.model, self.shard, self.settings, self.sampling = model, shard, settings, sampling
        self.weights, self.device, self.dp = weights, device, sigma is not None
        self.features = features
        self.optimizer = self.inner = optimizer
        if self.dp:
            self.optimizer = PrivateOptimizer(
                optimizer,
                DPEngine(model, settings.max_grad_norm),
                noise_multiplier=sigma,
                expected_batch_size=sampling.expected_batch_size,
                # Several ranks (torchrun): the clipped sums are added up before the noise.
                all_reduce=distributed.all_reduce_sum,
            )
        ranks.lead_start(settings, sigma)

    def run(self, seed: str, step_done: Callable[[int], None]) -> float:
        """Train one epoch; its mean loss. Sampling, augmentation and noise come from the
        epoch's recorded ``seed`` (replay.epoch_streams)."""
        with ranks.lead_epoch(seed, self.model, self.inner):
            return self._run(seed, step_done)

    def _run(self, seed: str, step_done: Callable[[int], None]) -> float:
        rng, s_aug, s_noise = replay.epoch_streams(seed)
        jitter = torch.Generator().manual_seed(s_aug) if self.settings.augment else None
        batches = _Batches(self.shard, self.device, jitter, self.settings, self.features)
        self.model.train()
        steps = self.sampling.steps_per_epoch
        if not self.dp:
            return _plain_epoch(
                self.model, self.optimizer, batches, rng,
                steps=steps, weights=self.weights, step_done=step_done,
            )  # fmt: skip
        self.optimizer.generator = NoiseGenerator(s_noise)
        return _dp_epoch(
            self.model, self.optimizer, batches, self.sampling.sampler, rng,
            q=self.sampling.sample_rate, steps=steps,
            physical=self.settings.physical_batch_size, weights=self.weights,
            step_done=step_done,
        )  # fmt: skip

    def close(self) -> None:
        ranks.lead_done()
        if self.dp:
            self.optimizer.engine.detach()


def _dp_epoch(
    model, optimizer, batches, sampler, rng, *, q, steps, physical, weights, step_done
) -> float:
    """Poisson-sampled private steps; the batch is processed about ``physical`` examples at
    a time, never splitting a unit (a patient's images are clipped together)."""
    total, count = 0.0, 0
    grouped = sampler.unit == PATIENT
    if batches.features is not None:
        physical = max(physical, 4096)  # a head on features: large chunks are cheap
    for i in range(steps):
        idx = sampler.sample(rng, q)
        optimizer.zero_grad()
        for chunk in sampler.chunks(idx, physical):
            # Under torchrun each rank takes its share of whole units and skips the others'
            # augmentation draws: the same images and jitter as in one process.
            part, before, after = ranks.share_step(chunk, sampler.unit_of[chunk])
            batches.skip(before)
            if len(part):
                x, y = batches(part)
                groups, scale = sampler.grouping(part) if grouped else (None, None)

                def forward(x=x, y=y, scale=scale):
                    loss = _losses(batches.forward(model, x), y, weights)
                    return loss if scale is None else loss * torch.from_numpy(scale).to(loss)

                losses = optimizer.backward(
                    forward, None if groups is None else torch.from_numpy(groups)
                )
                total += float(losses.sum())
                count += len(y) if scale is None else int(groups.max()) + 1
            batches.skip(after)
        optimizer.step()
        step_done(i + 1)
    total, count = distributed.sum_floats(total, count)
    return total / max(count, 1)


def _plain_epoch(model, optimizer, batches, rng, *, steps, weights, step_done) -> float:
    """Ordinary minibatch SGD over a shuffled pass of all images (baselines only)."""
    n = len(batches.shard)
    order = rng.permutation(n)
    size = math.ceil(n / steps)
    total, count = 0.0, 0
    for i in range(steps):
        x, y = batches(order[i * size : (i + 1) * size])
        optimizer.zero_grad(set_to_none=True)
        losses = _losses(batches.forward(model, x), y, weights)
        norm = weights.to(y.device)[y].sum() if weights is not None else len(y)
        (losses.sum() / norm).backward()
        optimizer.step()
        total += float(losses.detach().sum())
        count += len(y)
        step_done(i + 1)
    return total / max(count, 1)
