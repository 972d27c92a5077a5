"""DP-SGD's private step: per-example clipping (DPEngine) and noising (PrivateOptimizer).

Per-example gradient clipping without storing every per-example gradient.

DP-SGD needs, for each example i, its gradient g_i clipped to norm C, summed over the batch:
``sum_i c_i g_i`` with ``c_i = min(1, C / |g_i|)``. Opacus materialises every g_i for every
parameter, which costs memory and time proportional to batch x parameters. Here, one backward
pass gives each layer's input activations A and output gradients G; from those:

* the per-example norm of a layer's weight gradient is computed either from the materialised
  per-example gradient (cheap when the layer is small) or, for layers whose spatial extent T is
  small, from the "ghost" identity |G_i^T A_i|^2 = <A_i A_i^T, G_i G_i^T> (T x T matrices);
* the clipped sum is linear in G, so it is one ordinary weight-gradient computation with G
  rescaled by c_i — no second backward pass through the network.

(This is the "book-keeping" formulation of DP-SGD of Bu et al., 2023.) Supported layers with
trainable parameters: Conv2d (groups=1), Linear, GroupNorm. Anything else is refused up front.

With ``groups`` (the privacy unit of each example, e.g. its patient), the clipped unit is the
group: the rows of a group are summed BEFORE the norm (the caller weights each example's loss
by 1 / its group's size, so a group's gradient is the mean over its examples) and each
group's gradient is clipped once. Per-group gradients are then formed explicitly per layer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedxray.errors import FedxrayError

_SUPPORTED = (nn.Conv2d, nn.Linear, nn.GroupNorm)
# Per-example intermediate tensors are processed in batch chunks to bound memory.
_CHUNK_ELEMENTS = 1 << 25
# Largest per-layer stack of per-example weight gradients kept in memory (elements).
_MATERIALISE_ELEMENTS = 1 << 24
# Conv layers whose weight has this many times more entries than T^2 (T = output positions)
# use the ghost norm; measured on CPU, the two methods break even near 15.
_GHOST_RATIO = 12


def private_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose per-example gradients the engine computes. A model with a trainable
    layer the engine does not support cannot be trained with DP: FedxrayError."""
    layers = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, _SUPPORTED):
            raise FedxrayError(
                f"layer {name or '<root>'} ({type(module).__name__}) is not supported by "
                "the DP engine"
            )
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise FedxrayError(f"layer {name}: grouped or non-zero-padded convolutions unsupported")
        if isinstance(module, nn.GroupNorm) and not module.affine:
            continue
        layers.append(module)
    return layers


class DPEngine:
    """Attach to a model; ``clipped_backward`` fills ``.grad`` with the clipped per-example sum."""

    def __init__(self, model: nn.Module, max_grad_norm: float):
        if not max_grad_norm > 0:
            raise FedxrayError(f"max_grad_norm must be positive, got {max_grad_norm}")
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self._layers = private_layers(model)
        self._records: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._armed = False
        self._handles = [m.register_forward_hook(self._capture) for m in self._layers]

    def detach(self) -> None:
        """Remove the hooks (the model is then an ordinary module again)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _capture(self, module, inputs, output):
        if not self._armed:
            return
        if module in self._records:
            raise FedxrayError(f"{type(module).__name__} is used twice in one forward pass")
        # The version counter detects a later in-place op, which would silently corrupt G.
        self._records[module] = (inputs[0].detach(), output, output._version)

    def clipped_backward(
        self, forward: Callable[[], torch.Tensor], groups: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``forward`` (returning per-example losses [B]) and set each ``p.grad``.

        After the call, ``p.grad`` holds sum_i clip(g_i) (no noise, no averaging), where i
        runs over the examples, or with ``groups`` (int64 [B], values 0..G-1) over the groups
        and g_i is the sum of the group's per-example gradients.
        Returns (per-example losses detached, per-unit gradient norms before clipping).
        """
        self._records.clear()
        self._armed = True
        try:
            losses = forward()
        finally:
            self._armed = False
        records, self._records = self._records, {}
        if losses.dim() != 1:
            raise FedxrayError("forward must return one loss per example")
        layers = [m for m in self._layers if m in records]
        for m in layers:
            if records[m][1]._version != records[m][2]:
                raise FedxrayError(f"{type(m).__name__} output was modified in place")
        outputs = [records[m][1] for m in layers]
        grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
        if groups is not None:
            return losses.detach(), self._grouped(layers, records, grads, groups)
        batch = losses.shape[0]
        device = losses.device
        sq_norms = torch.zeros(batch, device=device, dtype=torch.float64)
        cached: list[object] = []
        for m, g in zip(layers, grads, strict=True):
            a = records[m][0]
            if g is None:
                g = torch.zeros_like(records[m][1])
            sq, cache = _layer_sq_norms(m, _f32(a), _f32(g))
            sq_norms += sq.double()
            cached.append((a, g, cache))
        norms = sq_norms.sqrt()
        scale = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for m, (a, g, cache) in zip(layers, cached, strict=True):
            _layer_clipped_sum(m, _f32(a), _f32(g), cache, scale)
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        return losses.detach(), norms

    def _grouped(self, layers, records, grads, groups: torch.Tensor) -> torch.Tensor:
        """Clip per group: each group's summed gradient, clipped once; its norms [G]."""
        groups = groups.to(grads[0].device if grads else "cpu", torch.int64)
        count = int(groups.max()) + 1 if groups.numel() else 0
        per_group: list[tuple[torch.Tensor, torch.Tensor]] = []
        for m, g in zip(layers, grads, strict=True):
            a = records[m][0]
            if g is None:
                g = torch.zeros_like(records[m][1])
            for p, value in _group_grads(m, _f32(a), _f32(g), groups, count):
                per_group.append((p, value))
        sq = torch.zeros(count, dtype=torch.float64, device=groups.device)
        for _, value in per_group:
            sq += value.flatten(1).double().pow(2).sum(1)
        norms = sq.sqrt()
        scale = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for p, value in per_group:
            _accumulate(p, torch.tensordot(scale.to(value.dtype), value, dims=1))
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
        return norms

    def zero_grad(self) -> None:
        for p in self.model.parameters():
            p.grad = None


def _chunks(batch: int, per_example: int):
    size = max(1, _CHUNK_ELEMENTS // max(1, per_example))
    for start in range(0, batch, size):
        yield slice(start, min(batch, start + size))


def _layer_sq_norms(m: nn.Module, a: torch.Tensor, g: torch.Tensor):
    """Per-example squared gradient norm of layer m's parameters, plus what the sum reuses."""
    if isinstance(m, nn.GroupNorm):
        xhat = F.group_norm(a, m.num_groups, eps=m.eps)
        gw = (g * xhat).reshape(g.shape[0], g.shape[1], -1).sum(2)  # [B, C]
        gb = g.reshape(g.shape[0], g.shape[1], -1).sum(2)
        return gw.pow(2).sum(1) + gb.pow(2).sum(1), (gw, gb)
    if isinstance(m, nn.Linear):
        a3 = a.reshape(a.shape[0], -1, a.shape[-1])
        g3 = g.reshape(g.shape[0], -1, g.shape[-1])
        gb = g3.sum(1) if m.bias is not None else None
        if a3.shape[1] == 1:
            sq = a3.pow(2).sum((1, 2)) * g3.pow(2).sum((1, 2))
            psg = None
        else:
            psg = torch.bmm(g3.transpose(1, 2), a3)
            sq = psg.pow(2).sum((1, 2))
        if gb is not None:
            sq = sq + gb.pow(2).sum(1)
        return sq, (psg, gb)
    # Conv2d
    batch = a.shape[0]
    g3 = g.flatten(2)  # [B, Cout, T]
    t = g3.shape[2]
    weight_size = m.weight.numel()
    sq = a.new_empty(batch)
    # Two ways to the per-example norms, chosen by shape alone (so runs stay reproducible):
    # * few output positions T, big weight: the ghost identity on T x T matrices, then the
    #   clipped sum is one ordinary weight-gradient pass on rescaled G;
    # * otherwise per-example weight gradients (vmap over the weight-gradient kernel, much
    #   faster on CPU than unfold + bmm), kept for the clipped sum when they fit in memory,
    #   else formed chunk by chunk and dropped.
    ghost = weight_size >= _GHOST_RATIO * t * t
    keep = not ghost and batch * weight_size <= _MATERIALISE_ELEMENTS
    psg = a.new_empty((batch, *m.weight.shape)) if keep else None
    if ghost:
        kw = dict(dilation=m.dilation, padding=m.padding, stride=m.stride)
        per_example = a[0].numel() * m.weight[0, 0].numel() + t * t
        for s in _chunks(batch, per_example):
            u = F.unfold(a[s], m.kernel_size, **kw)  # [b, Cin*k*k, T]
            aa = torch.bmm(u.transpose(1, 2), u)
            gg = torch.bmm(g3[s].transpose(1, 2), g3[s])
            sq[s] = (aa * gg).sum((1, 2))
    else:
        # vmap over the ordinary weight-gradient kernel: much faster on CPU than unfold + bmm.
        per_example = a[0].numel() + g[0].numel() + weight_size
        for s in _chunks(batch, per_example):
            w = _per_example_conv_grad(m, a[s], g[s])
            sq[s] = w.flatten(1).pow(2).sum(1)
            if psg is not None:
                psg[s] = w
    gb = None
    if m.bias is not None:
        gb = g3.sum(2)
        sq = sq + gb.pow(2).sum(1)
    return sq, (psg, gb)


def _group_grads(m, a, g, groups: torch.Tensor, count: int):
    """(parameter, its per-group gradient [G, *shape]) for each trainable parameter of m."""

    def summed(per_example: torch.Tensor) -> torch.Tensor:
        out = per_example.new_zeros((count, *per_example.shape[1:]))
        return out.index_add_(0, groups[: per_example.shape[0]], per_example)

    out = []
    if isinstance(m, nn.GroupNorm):
        xhat = F.group_norm(a, m.num_groups, eps=m.eps)
        out.append((m.weight, summed((g * xhat).reshape(g.shape[0], g.shape[1], -1).sum(2))))
        out.append((m.bias, summed(g.reshape(g.shape[0], g.shape[1], -1).sum(2))))
        return out
    if isinstance(m, nn.Linear):
        a3 = a.reshape(a.shape[0], -1, a.shape[-1])
        g3 = g.reshape(g.shape[0], -1, g.shape[-1])
        weight = a.new_zeros((count, *m.weight.shape))
        for s in _chunks(a.shape[0], m.weight.numel()):
            weight.index_add_(0, groups[s], torch.bmm(g3[s].transpose(1, 2), a3[s]))
        out.append((m.weight, weight))
        if m.bias is not None:
            out.append((m.bias, summed(g3.sum(1))))
        return out
    # Conv2d: per-example weight gradients, chunk by chunk, summed into their groups.
    weight = a.new_zeros((count, *m.weight.shape))
    per_example = a[0].numel() + g[0].numel() + m.weight.numel()
    for s in _chunks(a.shape[0], per_example):
        weight.index_add_(0, groups[s], _per_example_conv_grad(m, a[s], g[s]))
    out.append((m.weight, weight))
    if m.bias is not None:
        out.append((m.bias, summed(g.flatten(2).sum(2))))
    return out


def _per_example_conv_grad(m: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weight = _f32(m.weight.detach())

    def one(ai, gi):
        return _conv_weight_grad(m, ai[None], gi[None], weight)

    return torch.func.vmap(one)(a, g)


def _conv_weight_grad(m: nn.Conv2d, a, g, weight) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        g,
        a,
        weight,
        None,
        m.stride,
        m.padding,
        m.dilation,
        False,
        [0, 0],
        m.groups,
        [False, True, False],
    )[1]


def _accumulate(p: torch.Tensor, value: torch.Tensor) -> None:
    value = value.to(p.dtype)
    p.grad = value if p.grad is None else p.grad + value


def _layer_clipped_sum(m, a, g, cache, scale: torch.Tensor) -> None:
    scale = scale.to(a.dtype)
    if isinstance(m, nn.GroupNorm):
        gw, gb = cache
        _accumulate(m.weight, scale @ gw)
        _accumulate(m.bias, scale @ gb)
        return
    psg, gb = cache
    if gb is not None:
        _accumulate(m.bias, scale @ gb)
    if psg is not None:
        _accumulate(m.weight, torch.tensordot(scale, psg, dims=1).reshape(m.weight.shape))
        return
    gs = g * scale.view(-1, *([1] * (g.dim() - 1)))
    if isinstance(m, nn.Linear):
        a2 = a.reshape(-1, a.shape[-1])
        _accumulate(m.weight, gs.reshape(-1, gs.shape[-1]).t() @ a2)
        return
    # Conv2d with the ghost norm: one ordinary weight-gradient computation on rescaled G.
    _accumulate(m.weight, _conv_weight_grad(m, a, gs, _f32(m.weight.detach())))


def _f32(t: torch.Tensor) -> torch.Tensor:
    # Per-example arithmetic in at least float32, even when the forward ran in half precision.
    return t.to(torch.promote_types(t.dtype, torch.float32))


AllReduce = Callable[[list[torch.Tensor]], None]


class NoiseGenerator:
    """The Gaussian noise of DP-SGD: standard normal draws from a numpy PCG64DXSM stream,
    made on the CPU (the same numbers on any device) and moved to the gradient's device.

    ``seed`` (a numpy SeedSequence) makes the stream reproducible; without one, the stream
    is seeded from 256 bits of the operating system's entropy, never from a fixed value or
    from torch's global generator. Like Opacus without ``secure_mode``, the floating-point
    sampler does not defend against Mironov-style attacks on the low-order bits.
    """

    def __init__(self, seed: np.random.SeedSequence | None = None):
        if seed is None:
            seed = np.random.SeedSequence(secrets.randbits(256), pool_size=8)
        self._rng = np.random.Generator(np.random.PCG64DXSM(seed))

    def normal(self, shape, dtype: torch.dtype, device) -> torch.Tensor:
        wide = dtype == torch.float64
        draw = self._rng.standard_normal(
            size=tuple(shape), dtype=np.float64 if wide else np.float32
        )
        return torch.from_numpy(draw).to(device=device, dtype=dtype)


class PrivateOptimizer:
    """DP-SGD's whole private step around an ordinary optimiser, as Opacus' DPOptimizer.

    ``backward`` clips each example's gradient to ``max_grad_norm`` and adds it to the running
    sum (:class:`DPEngine`); ``step`` hands the clipped sum to ``all_reduce`` (the one place
    where processes that share a batch add up their sums), adds Gaussian noise of standard
    deviation ``noise_multiplier * max_grad_norm`` drawn from ``generator`` (a
    :class:`NoiseGenerator`; a fresh OS-seeded one when None), divides by the EXPECTED batch
    size (with Poisson sampling the real size is private) and lets the optimiser step.
    Accounting is not done here: the caller records each epoch in the privacy ledger before
    it runs.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        engine: DPEngine,
        *,
        noise_multiplier: float,
        expected_batch_size: float,
        generator: NoiseGenerator | None = None,
        all_reduce: AllReduce | None = None,
    ):
        if not expected_batch_size > 0:
            raise FedxrayError(f"expected batch size must be positive, got {expected_batch_size}")
        self.optimizer = optimizer
        self.engine = engine
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        # The caller may set a new one for each epoch (from the epoch's recorded seed).
        self.generator = generator if generator is not None else NoiseGenerator()
        self.all_reduce = all_reduce
        self.params = [p for p in engine.model.parameters() if p.requires_grad]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(
        self, forward: Callable[[], torch.Tensor], groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run ``forward`` (per-example losses [B]); add the clipped gradients to the sum
        (clipped per group of examples with ``groups``: DPEngine.clipped_backward)."""
        losses, _ = self.engine.clipped_backward(forward, groups)
        return losses

    def step(self) -> None:
        for p in self.params:
            if p.grad is None:  # a batch can be empty: the step is then noise alone
                p.grad = torch.zeros_like(p)
        clipped_sum = [p.grad for p in self.params]
        if self.all_reduce is not None:
            self.all_reduce(clipped_sum)
        std = self.noise_multiplier * self.engine.max_grad_norm
        for g in clipped_sum:
            noise = self.generator.normal(g.shape, g.dtype, g.device)
            g.add_(noise, alpha=std).div_(self.expected_batch_size)
        self.optimizer.step()
