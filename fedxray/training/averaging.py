"""Iterate averaging: a function of models already computed, so it costs no privacy.

Two uses. At a site, :func:`attach_ema` keeps an exponential moving average of the local
iterates in the optimiser's own state (so checkpoints, resume and replay carry it like the
momentum buffer) and :func:`averaged_state` reads the update's weights from it. At the
coordinator, :func:`mean_state` is the published model: the exact mean of the last K global
models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a site trains: the coordinator's unmask needs numpy alone
    import torch
    from torch import nn

EMA, EMA_STEPS = "ema", "ema_steps"  # keys of a parameter's optimiser state


def attach_ema(optimizer: torch.optim.Optimizer, decay: float) -> None:
    """After every step of ``optimizer``, fold its parameters into their moving average.

    The average is debiased (it starts at the first iterate, not at the start point): after n
    steps it is the mean of iterates 1..n weighted by decay**(n - i). ``decay`` 0 attaches
    nothing, so that training is exactly what it was without averaging.
    """
    if not decay:
        return
    import torch

    def fold(opt, args, kwargs) -> None:
        with torch.no_grad():
            for group in opt.param_groups:
                for p in group["params"]:
                    state = opt.state[p]
                    if EMA not in state:
                        state[EMA] = p.detach().clone()
                        state[EMA_STEPS] = torch.ones((), dtype=p.dtype, device=p.device)
                        continue
                    n = float(state[EMA_STEPS]) + 1
                    state[EMA_STEPS].fill_(n)
                    state[EMA].lerp_(p.detach(), (1 - decay) / (1 - decay**n))

    optimizer.register_step_post_hook(fold)


def averaged_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The model's state with every parameter the optimiser averaged replaced by its average
    (buffers and untrained parameters as they are)."""
    names = {id(p): name for name, p in model.named_parameters()}
    state = dict(model.state_dict())
    for group in optimizer.param_groups:
        for p in group["params"]:
            ema = optimizer.state.get(p, {}).get(EMA)
            if ema is not None:
                state[names[id(p)]] = ema
    return state


def mean_state(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The tensor-wise mean of models with the same names and shapes, summed in float64 and
    rounded once to float32."""
    if not states:
        raise ValueError("no models to average")
    first = states[0]
    out = {}
    for name in first:
        total = np.zeros(np.shape(first[name]), np.float64)
        for s in states:
            total += np.asarray(s[name], np.float64)
        out[name] = (total / len(states)).astype(np.float32)
    return out
