"""In-process FedAvg over sites, with or without patient-level DP; iterate averaging.

Secure aggregation sums the sites' updates exactly, so simulating it as an in-process
weighted sum gives the same global model. Every site draws its DP noise and Poisson samples
from its own generator, seeded from (run seed, site, round) through numpy's SeedSequence:
streams for different sites or rounds are independent (the bug of issue 10 was one shared
seed per round for all sites).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from dp_step import DPSettings, SiteData, dp_gradient, flat_params, plain_gradient, set_flat_params
from torch import nn

from fedxray.training.accounting import calibrate_noise, epsilon


@dataclass(frozen=True)
class Recipe:
    """How every site trains (the plan's training part)."""

    rounds: int = 10
    local_steps: int = 5  # full-batch (or Poisson) gradient steps per round
    lr: float = 2.0
    momentum: float = 0.0  # local heavy-ball momentum
    keep_velocity: bool = False  # a site keeps its momentum from round to round (site state)
    clip: float = 1.0
    sample_rate: float = 1.0
    target_epsilon: float = 8.0
    delta: float = 1e-5
    server_lr: float = 1.0
    weight_decay: float = 0.0  # L2 on the weights (not biases), added to the noisy gradient
    schedule: str = "constant"  # or "cosine": lr * (1 + cos(pi t / steps)) / 2 at step t
    bias_lr: float | None = None  # learning rate of the biases (None: ``lr``)
    # Centring of the head's input by a DP estimate of the mean feature (None: no centring):
    # the noise multiplier of that one Gaussian release (sensitivity 1 per patient).
    center_sigma: float | None = None

    @property
    def steps(self) -> int:
        return self.rounds * self.local_steps


# Purposes of a site's random streams (each its own SeedSequence entropy).
TRAIN_STREAM, CENTER_STREAM = 0, 1


def site_generator(run_seed: int, site: int, round_: int, purpose: int = TRAIN_STREAM):
    """A site's private random stream for one round, independent of every other site's."""
    entropy = [run_seed, 0x5173, purpose, site, round_]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint64)
    g = torch.Generator()
    g.manual_seed(int(state[0] >> np.uint64(1)))
    return g


def privacy_history(recipe: Recipe, sigma: float) -> list[tuple[float, float, int]]:
    """Every release of one site: the centring statistic (if any), then the training steps."""
    prior = [] if recipe.center_sigma is None else [(recipe.center_sigma, 1.0, 1)]
    return [*prior, (sigma, recipe.sample_rate, recipe.steps)]


def calibrated_sigma(recipe: Recipe) -> tuple[float, float]:
    """(sigma, epsilon actually spent) for the planned steps at the plan's sample rate."""
    prior = privacy_history(recipe, 0.0)[:-1]
    sigma = calibrate_noise(
        recipe.target_epsilon, recipe.delta, recipe.sample_rate, recipe.steps, prior=prior
    )
    spent = epsilon(privacy_history(recipe, sigma), recipe.delta)
    return sigma, spent


def site_feature_sum(model: nn.Module, site: SiteData) -> torch.Tensor:
    """Sum over the site's patients of the patient's mean embedded feature (each norm <= 1)."""
    views, n = site.features.shape[:2]
    with torch.no_grad():
        total = None
        for v in range(views):
            z = torch.cat([model.embed(site.features[v, i : i + 1024]) for i in range(0, n, 1024)])
            total = z if total is None else total + z
        z = total / views
        per_patient = torch.zeros(site.n_patients, z.shape[1]).index_add_(0, site.patient, z)
        per_patient /= torch.bincount(site.patient, minlength=site.n_patients)[:, None].float()
    return per_patient.sum(0)


def federated_center(
    model: nn.Module, sites: list[SiteData], sigma: float | None, run_seed: int
) -> torch.Tensor:
    """Mean patient feature over all sites; each site adds N(0, sigma^2) to its sum first.

    The sums travel through secure aggregation like any update, so the coordinator sees only
    the noisy total. Site sizes (patients) are public in the plan's accounting anyway.
    """
    total = 0.0
    for s, site in enumerate(sites):
        part = site_feature_sum(model, site)
        if sigma is not None:
            gen = site_generator(run_seed, s, 0, CENTER_STREAM)
            part = part + torch.randn(part.shape, generator=gen) * sigma
        total = total + part
    return total / sum(site.n_patients for site in sites)


@dataclass
class RunLog:
    globals_: list[torch.Tensor] = field(default_factory=list)  # flat params after each round
    sigma: float | None = None
    epsilon: float | None = None
    seconds_per_site_round: list[float] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)


def train(
    model: nn.Module,
    sites: list[SiteData],
    recipe: Recipe,
    private: bool,
    run_seed: int,
    class_weights: torch.Tensor | None = None,
) -> RunLog:
    """FedAvg for ``recipe.rounds`` rounds (one site = centralised training).

    ``private``: every site clips per patient and adds its own calibrated Gaussian noise to
    every step (and to its centring statistic); otherwise plain full-batch gradients.
    """
    log = RunLog()
    dp = None
    if private:
        log.sigma, log.epsilon = calibrated_sigma(recipe)
        dp = DPSettings(recipe.clip, log.sigma, recipe.sample_rate)
    if recipe.center_sigma is not None:
        noise = recipe.center_sigma if private else None  # exact mean for non-private runs
        model.center.copy_(federated_center(model, sites, noise, run_seed))
    lr, decay = step_sizes(model, recipe)
    weights = torch.tensor([s.n_patients for s in sites], dtype=torch.float64)
    weights = (weights / weights.sum()).float()
    global_flat = flat_params(model)
    log.globals_.append(global_flat.clone())
    local = copy.deepcopy(model)  # after the centre is set: it is a buffer of the model
    velocities = [torch.zeros_like(global_flat) for _ in sites]
    for r in range(recipe.rounds):
        update = torch.zeros_like(global_flat)
        for s, site in enumerate(sites):
            started = time.monotonic()
            gen = site_generator(run_seed, s, r)
            set_flat_params(local, global_flat)
            theta = global_flat.clone()
            velocity = velocities[s] if recipe.keep_velocity else torch.zeros_like(theta)
            for e in range(recipe.local_steps):
                if dp is not None:
                    g, info = dp_gradient(local, site, dp, gen, class_weights)
                    log.diagnostics.append({"round": r, "site": s} | info)
                else:
                    g = plain_gradient(local, site, class_weights)
                # Heavy-ball momentum, decay and step sizes act on the noisy gradient only:
                # post-processing, no privacy cost.
                velocity = recipe.momentum * velocity + g + decay * theta
                theta = theta - schedule_factor(recipe, r * recipe.local_steps + e) * lr * velocity
                set_flat_params(local, theta)
            velocities[s] = velocity
            update += weights[s] * (theta - global_flat)
            log.seconds_per_site_round.append(time.monotonic() - started)
        global_flat = global_flat + recipe.server_lr * update  # what secure aggregation sums
        log.globals_.append(global_flat.clone())
    return log


def step_sizes(model: nn.Module, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-parameter learning rate and weight decay (biases: ``bias_lr``, no decay)."""
    lr = torch.full_like(flat_params(model), recipe.lr)
    is_bias = torch.zeros_like(lr, dtype=torch.bool)
    start = 0
    for name, p in model.named_parameters():
        is_bias[start : start + p.numel()] = name.endswith("bias")
        start += p.numel()
    if recipe.bias_lr is not None:
        lr[is_bias] = recipe.bias_lr
    return lr, torch.where(is_bias, 0.0, recipe.weight_decay)


def schedule_factor(recipe: Recipe, step: int) -> float:
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def averaged(globals_: list[torch.Tensor], how: str) -> torch.Tensor:
    """The released model: ``last``, ``meanK`` (mean of the last K globals) or ``emaB``.

    Post-processing of models the coordinator already has: no privacy cost.
    """
    if how == "last":
        return globals_[-1]
    if how.startswith("mean"):
        k = int(how[4:])
        return torch.stack(globals_[-k:]).mean(0)
    if how.startswith("ema"):
        beta = float(how[3:])
        ema = globals_[1]
        for g in globals_[2:]:
            ema = beta * ema + (1 - beta) * g
        return ema
    raise ValueError(how)
