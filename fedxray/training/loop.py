"""One site's local training for one federation round (``fedxray train-local``'s library).

Order of events per epoch, chosen so that a crash can only over-count privacy spending:
record the epoch in the ledger and save it, train the epoch, save the epoch checkpoint.
Re-running a round after a crash continues from the last checkpoint; re-running a finished
round returns the same update again without training (nothing new is spent).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedxray.data.shard import Shard
from fedxray.errors import BudgetExceededError, FedxrayError, ProtocolRefusal
from fedxray.models.inputs import ImageInput
from fedxray.models.registry import build_model, load_numpy_state, state_to_numpy
from fedxray.training import accounting, checkpoint
from fedxray.training.augment import augment
from fedxray.training.dp_engine import DPEngine
from fedxray.training.ledger import Ledger, ledger_lock
from fedxray.training.sampling import IMAGE, UnitSampler, resolve_unit
from fedxray.training.settings import TrainSettings

Progress = Callable[[int, int], None]


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
    progress: Progress | None = None,
) -> RoundResult:
    """Train ``settings.local_epochs`` epochs from ``global_state`` on ``shard``.

    ``seed`` makes the run reproducible (sampling, augmentation AND noise): never use a seed
    known outside the site for a DP run, or the noise could be recomputed. With ``seed=None``
    fresh OS entropy is used.
    Raises BudgetExceededError (nothing trained, nothing written) when this round would take
    the site's epsilon past the plan's target or the stricter local cap.
    """
    started = time.perf_counter()
    _check_inputs(shard, settings, round_number)
    dev = torch.device(device)
    weights = _class_weights(settings, shard, dp)
    warnings: list[str] = []

    unit = resolve_unit(shard, settings.privacy_unit) if dp else IMAGE
    sampler = UnitSampler(shard, unit)
    if dp:
        q, epoch_steps = accounting.steps_per_epoch(sampler.num_units, settings.batch_size)
        if settings.delta >= 1.0 / sampler.num_units:
            warnings.append(
                f"delta={settings.delta:g} is not below 1/{sampler.num_units} "
                f"({unit}s at this site): the guarantee is weak"
            )
    else:
        q, epoch_steps = 1.0, math.ceil(len(shard) / settings.batch_size)
    total_epochs = settings.local_epochs

    with ledger_lock(ledger_path):
        ledger = Ledger.load(ledger_path, federation_id)
        sigma = _noise_multiplier(ledger, settings, unit, q, epoch_steps, round_number, dp)

        model = build_model(settings.arch, settings.image_size, len(settings.classes))
        load_numpy_state(model, global_state)
        model.to(dev)
        optimizer = _optimizer(model, settings)

        keys = {
            "federation_id": federation_id,
            "round": int(round_number),
            "global_sha256": checkpoint.state_hash(global_state),
            "settings_sha256": settings.fingerprint(),
            "shard_sha256": checkpoint.shard_hash(shard),
            "dp": dp,
            "noise_multiplier": sigma,
        }
        ckpt_file = None
        done_epochs, losses = 0, []
        if checkpoint_dir is not None:
            ckpt_file = checkpoint.checkpoint_path(checkpoint_dir, federation_id, round_number)
            done_epochs, losses = _restore(ckpt_file, keys, ledger, model, optimizer)
        resumed = done_epochs

        remaining = total_epochs - done_epochs
        if dp and remaining > 0:
            _check_budget(ledger, settings, sigma, q, epoch_steps, remaining, round_number)

        if ckpt_file is not None and remaining > 0:
            try:  # only now: a refused run leaves nothing behind
                ckpt_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                raise FedxrayError(
                    f"cannot create checkpoint folder {ckpt_file.parent}: {e.strerror}"
                ) from None
        engine = DPEngine(model, settings.max_grad_norm) if dp else None
        base_seed = seed if seed is not None else secrets.randbits(63)
        total_steps = total_epochs * epoch_steps
        steps_taken = 0
        for epoch in range(done_epochs + 1, total_epochs + 1):
            attempt = sum(
                1
                for h in ledger.to_dict()["history"]
                if h["round"] == round_number and h["epoch"] == epoch
            )
            # Write-ahead: the epoch is counted before any of its results exist.
            ledger.record_epoch(
                round_number=round_number,
                epoch=epoch,
                steps=epoch_steps,
                noise_multiplier=sigma,
                sample_rate=q,
            )
            ledger.save()
            seq = np.random.SeedSequence([base_seed, int(round_number), epoch, attempt])
            rng = np.random.default_rng(seq)
            s_aug, s_noise = (int(x) for x in seq.generate_state(2, dtype=np.uint64) >> 1)
            gen_aug = torch.Generator().manual_seed(s_aug)
            gen_noise = torch.Generator(device=dev).manual_seed(s_noise)
            first = (epoch - 1) * epoch_steps

            def step_done(i: int, first: int = first) -> None:
                if progress is not None and i < epoch_steps:  # the epoch's last is below
                    progress(first + i, total_steps)

            batches = _Batches(shard, dev, gen_aug if settings.augment else None, settings)
            model.train()
            if dp:
                loss = _dp_epoch(
                    model, engine, optimizer, batches, sampler, rng, gen_noise,
                    q=q, steps=epoch_steps, sigma=sigma, settings=settings,
                    weights=weights, step_done=step_done,
                )  # fmt: skip
            else:
                loss = _plain_epoch(
                    model, optimizer, batches, rng, steps=epoch_steps,
                    weights=weights, step_done=step_done,
                )  # fmt: skip
            steps_taken += epoch_steps
            losses.append(loss)
            if ckpt_file is not None:
                _save(ckpt_file, keys, epoch, losses, model, optimizer)
            if epoch == total_epochs:
                ledger.finish_round(round_number)
                ledger.save()
            if progress is not None:
                progress(epoch * epoch_steps, total_steps)
        if engine is not None:
            engine.detach()
        if remaining == 0 and not ledger.round_finished(round_number):
            ledger.finish_round(round_number)  # a crash hit between checkpoint and ledger
            ledger.save()
        eps = ledger.epsilon() if dp else math.inf

    trained = state_to_numpy(model)
    delta = {k: (trained[k] - np.asarray(global_state[k], np.float32)) for k in trained}
    return RoundResult(
        delta=delta,
        num_examples=len(shard),
        num_patients=shard.num_patients,
        epsilon=eps,
        privacy_delta=settings.delta if dp else None,
        noise_multiplier=sigma,
        privacy_unit=unit if dp else None,
        dp=dp,
        losses=[float(v) for v in losses],
        seconds=time.perf_counter() - started,
        steps=steps_taken,
        resumed_from_epoch=resumed,
        warnings=warnings,
    )


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


def _noise_multiplier(ledger, settings, unit, q, epoch_steps, round_number, dp):
    """The federation's noise multiplier: from the ledger, or calibrated once (not saved yet)."""
    if ledger.non_private and dp:
        raise BudgetExceededError(
            f"federation {ledger.federation_id} was already trained without DP at this site",
            hint="no privacy guarantee remains for it; use a new federation for DP training",
        )
    if not dp:
        return None
    if ledger.calibration is not None:
        if ledger.unit != unit:
            raise FedxrayError(
                f"privacy unit changed: the ledger accounts per {ledger.unit}, "
                f"this run would sample per {unit}"
            )
        if not math.isclose(ledger.delta, settings.delta, rel_tol=1e-12):
            raise FedxrayError(
                f"delta changed: the ledger uses {ledger.delta:g}, the plan says {settings.delta:g}"
            )
        return ledger.noise_multiplier
    # Calibrated ONCE, for every round still ahead, to end exactly within the budget.
    rounds_ahead = settings.rounds - round_number + 1
    planned = rounds_ahead * settings.local_epochs * epoch_steps
    sigma = accounting.calibrate_noise(settings.epsilon_budget, settings.delta, q, planned)
    ledger.calibrate(
        noise_multiplier=sigma,
        delta=settings.delta,
        unit=unit,
        sample_rate=q,
        steps_per_epoch=epoch_steps,
        local_epochs=settings.local_epochs,
        rounds=rounds_ahead,
        first_round=int(round_number),
        total_steps=planned,
        target_epsilon=settings.epsilon_budget,
        max_grad_norm=settings.max_grad_norm,
    )
    return sigma


def _check_budget(ledger, settings, sigma, q, epoch_steps, remaining, round_number) -> None:
    spent = ledger.epsilon()
    after = ledger.epsilon(planned=[(sigma, q, epoch_steps * remaining)])
    budget = settings.epsilon_budget
    if after > budget * (1 + 1e-9):
        which = "local cap" if budget < settings.target_epsilon else "plan's target"
        raise BudgetExceededError(
            f"round {round_number} would raise epsilon from {spent:.3g} to {after:.3g}, "
            f"over the {which} {budget:g}; nothing was trained",
        )


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
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def _save(path, keys, epoch, losses, model, optimizer) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    for idx, st in optimizer.state_dict()["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{idx}/{name}"] = v
    checkpoint.save(Path(path), tensors, dict(keys, epoch=epoch, losses=losses))


def _restore(path, keys, ledger, model, optimizer) -> tuple[int, list[float]]:
    """Epochs done and their losses from a matching checkpoint; (0, []) when none."""
    found = checkpoint.load(Path(path))
    if found is None:
        return 0, []
    tensors, meta = found
    if any(meta.get(k) != v for k, v in keys.items()):
        return 0, []  # another global model, settings or data: start the round afresh
    epoch = int(meta["epoch"])
    if ledger.epochs_recorded(keys["round"]) < epoch:
        return 0, []  # the ledger does not account for it: do not build on it
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(model_state, strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, name = k.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    if opt_state:
        sd = optimizer.state_dict()
        sd["state"] = opt_state
        optimizer.load_state_dict(sd)
    return epoch, [float(v) for v in meta["losses"]]


# -- epochs -----------------------------------------------------------------------------------
class _Batches:
    """Turns image indices into model inputs (the model's input view, augmented) and labels."""

    def __init__(self, shard, device, generator, settings):
        self.shard, self.device, self.generator = shard, device, generator
        self.labels = torch.from_numpy(np.asarray(shard.labels, dtype=np.int64))
        self.autocast = device.type == "cuda"
        self.view = ImageInput()

    def __call__(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.sort(idx)
        jitter = None if self.generator is None else lambda x: augment(x, self.generator)
        x = self.view(self.shard.images[idx], self.device, jitter)
        return x, self.labels[idx].to(self.device)

    def forward(self, model, x):
        if self.autocast:  # mixed precision on GPU only
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)
        return model(x)


def _losses(logits, y, weights) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    if weights is not None:
        loss = loss * weights.to(loss.device)[y]
    return loss


def _dp_epoch(
    model, engine, optimizer, batches, sampler, rng, gen_noise, *, q, steps, sigma,
    settings, weights, step_done,
) -> float:  # fmt: skip
    """Poisson-sampled, clipped, noised steps; noise std sigma*C over the EXPECTED batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    expected = q * sampler.num_units
    std = sigma * settings.max_grad_norm
    total, count = 0.0, 0
    for i in range(steps):
        idx = sampler.sample(rng, q)
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(idx), settings.physical_batch_size):
            x, y = batches(idx[start : start + settings.physical_batch_size])
            losses, _ = engine.clipped_backward(
                lambda x=x, y=y: _losses(batches.forward(model, x), y, weights)
            )
            total += float(losses.sum())
            count += len(y)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            noise = torch.randn(p.shape, generator=gen_noise, device=p.device, dtype=p.dtype)
            p.grad.add_(noise, alpha=std).div_(expected)
        optimizer.step()
        step_done(i + 1)
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
