"""One differentially private gradient step with the PATIENT as the privacy unit.

What is clipped: for each sampled patient u, the gradient of that patient's mean loss

    g_u = (1 / (n_u * V)) * sum over the patient's n_u images i and V views v of grad l(x_iv)

(all of the patient's images, and all views of each image: augmentation multiplicity,
De et al. 2022, averaged BEFORE clipping) is clipped once to norm C. The noisy gradient is

    (sum_u clip_C(g_u) + N(0, sigma^2 C^2 I)) / (q * P)

with q the Poisson sampling rate (1 = full batch) and P the site's number of patients. Adding
or removing one patient changes the clipped sum by at most C, whatever their number of
images, so the Opacus RDP accounting of a Poisson-subsampled Gaussian mechanism (fedxray.
training.accounting) applies with the patient as the unit. The denominator q * P is a public
constant (fixed for the run), not the realised batch size, which would depend on the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

# Per-image gradients are formed in chunks of this many images to bound memory.
CHUNK = 512


@dataclass
class SiteData:
    """One site's cached training features, in per-patient form.

    features: float32 [V, N, K, P, P] (view 0 is the clean image; 1.. are augmented views)
    labels:   int64 [N];  patient: int64 [N] dense ids 0..n_patients-1
    """

    features: torch.Tensor
    labels: torch.Tensor
    patient: torch.Tensor
    n_patients: int

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])

    def embedded(self, model: nn.Module) -> torch.Tensor:
        """[V, N, D] = model.embed(features), computed once (the embedding is fixed)."""
        if getattr(self, "_embedded", None) is None:
            with torch.no_grad():
                self._embedded = torch.stack([model.embed(f) for f in self.features])
        return self._embedded

    def augmented_embedding(self, model: nn.Module) -> torch.Tensor:
        """[V * N, D + 1]: rows (z - centre, 1), cached while the centre stays the same."""
        cached = getattr(self, "_zt_center", None)
        if cached is None or not torch.equal(cached, model.center):
            z = self.embedded(model) - model.center
            ones = torch.ones(*z.shape[:2], 1)
            self._zt = torch.cat([z, ones], dim=2).reshape(-1, z.shape[2] + 1)
            self._zt_center = model.center.detach().clone()
        return self._zt

    def pair_gram(self, zt: torch.Tensor) -> torch.Tensor:
        """zt_i . zt_j for every same-patient pair (fixed while the embedding is)."""
        if getattr(self, "_gram_of", None) is not zt:
            i, j = self.pairs(len(zt) // self.n_images)
            self._gram = torch.cat(
                [(zt[i[s : s + 4096]] * zt[j[s : s + 4096]]).sum(1) for s in range(0, len(i), 4096)]
            )
            self._gram_of = zt
        return self._gram

    def pairs(self, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index pairs (i, j) of rows of the view-stacked [V * N] arrays of one patient."""
        if getattr(self, "_pairs", None) is None:
            rows = torch.arange(views * self.n_images)
            pid = self.patient.repeat(views)
            order = torch.argsort(pid, stable=True)
            counts = torch.bincount(pid, minlength=self.n_patients)
            starts = torch.cumsum(counts, 0) - counts
            ii, jj = [], []
            for u in range(self.n_patients):
                members = rows[order[starts[u] : starts[u] + counts[u]]]
                ii.append(members.repeat_interleave(len(members)))
                jj.append(members.repeat(len(members)))
            self._pairs = (torch.cat(ii), torch.cat(jj))
        return self._pairs

    def image_weights(self) -> torch.Tensor:
        """1 / (images of the image's patient): a patient's images share one unit of weight."""
        counts = torch.bincount(self.patient, minlength=self.n_patients).float()
        return 1.0 / counts[self.patient]


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    start = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[start : start + p.numel()].view_as(p))
            start += p.numel()


def _image_weights(site: SiteData, class_weights: torch.Tensor | None) -> torch.Tensor:
    weight = site.image_weights() / site.features.shape[0]
    if class_weights is not None:
        weight = weight * class_weights[site.labels]
    return weight


def _linear_clipped_sum(model, site, chosen, clip, class_weights):
    """Patient-clipped gradient sum of a linear layer on fixed embeddings, without forming
    any per-patient gradient (the "ghost norm" identity of Goodfellow 2015 / Li et al. 2022).

    With z~ = (z - c, 1) and r = weight * (softmax - onehot), patient u's gradient is
    G_u = sum_{i in u} r_i z~_i^T over its images and views, so
    |G_u|^2 = sum_{i, j in u} (r_i . r_j)(z~_i . z~_j), and the clipped sum is
    sum_i f_u(i) r_i z~_i^T: one matrix product.
    Returns (flat clipped sum in parameters() order, per-patient norms of the chosen).
    """
    zt = site.augmented_embedding(model)  # [V * N, D + 1] rows (z - c, 1), fixed for the run
    views, d = site.features.shape[0], zt.shape[1] - 1
    lin = model.linear
    k = lin.weight.shape[0]
    weight = _image_weights(site, class_weights)
    onehot = F.one_hot(site.labels, k).float()
    with torch.no_grad():
        logits = zt[:, :d] @ lin.weight.T + lin.bias
        resid = (torch.softmax(logits, 1) - onehot.repeat(views, 1)) * weight.repeat(views)[:, None]
        keep = chosen[site.patient].repeat(views)
        resid = resid * keep[:, None]
        i, j = site.pairs(views)  # all (i, j) rows of zt belonging to one patient
        pid = site.patient.repeat(views)
        prod = (resid[i] * resid[j]).sum(1) * site.pair_gram(zt)
        sq = torch.zeros(site.n_patients).index_add_(0, pid[i], prod)
        norms = sq.clamp(min=0).sqrt()
        factor = (clip / (norms + 1e-12)).clamp(max=1.0)
        g = (resid * factor[pid][:, None]).T @ zt  # [k, d + 1]
    flat = torch.cat([g[:, :d].reshape(-1), g[:, d]])
    return flat, norms[chosen]


def per_patient_gradients(
    model: nn.Module,
    site: SiteData,
    images: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """[n_patients, D]: each patient's mean per-image, per-view loss gradient (not clipped).

    Any head (torch.func per-example gradients). ``images``: indices of the images to use
    (those of the sampled patients). Parameters are flattened in ``parameters()`` order.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    dim = sum(p.numel() for p in params.values())
    views = site.features.shape[0]

    def loss_one(prm, x, y, w):
        logits = functional_call(model, prm, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0)) * w

    grad_one = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))
    weight = _image_weights(site, class_weights)
    out = torch.zeros(site.n_patients, dim)
    for start in range(0, len(images), CHUNK):
        idx = images[start : start + CHUNK]
        for v in range(views):
            g = grad_one(params, site.features[v, idx], site.labels[idx], weight[idx])
            flat = torch.cat([g[n].reshape(len(idx), -1) for n in names], dim=1)
            out.index_add_(0, site.patient[idx], flat)
    return out


@dataclass(frozen=True)
class DPSettings:
    clip: float  # C: bound on each patient's gradient norm
    sigma: float  # noise multiplier (calibrated for the planned steps and sample rate)
    sample_rate: float  # q: Poisson rate per patient per step (1.0 = full batch)


def dp_gradient(
    model: nn.Module,
    site: SiteData,
    dp: DPSettings,
    generator: torch.Generator,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """One noisy, patient-level clipped gradient (flat [D]) and diagnostics.

    ``generator`` draws both the Poisson sample and the noise; it must be private to this site
    and independent of every other site's (see federation.site_generator).
    """
    if dp.sample_rate < 1.0:
        chosen = torch.rand(site.n_patients, generator=generator) < dp.sample_rate
        images = torch.nonzero(chosen[site.patient]).flatten()
    else:
        chosen = torch.ones(site.n_patients, dtype=torch.bool)
        images = torch.arange(site.n_images)
    if hasattr(model, "linear") and hasattr(model, "embed"):
        total, norms = _linear_clipped_sum(model, site, chosen, dp.clip, class_weights)
    else:
        grads = per_patient_gradients(model, site, images, class_weights)[chosen]
        norms = grads.norm(dim=1)
        factor = (dp.clip / (norms + 1e-12)).clamp(max=1.0)
        total = (grads * factor[:, None]).sum(0)
    noise = torch.randn(total.shape, generator=generator) * (dp.sigma * dp.clip)
    expected = dp.sample_rate * site.n_patients
    info = {
        "batch": int(chosen.sum()),
        "median_norm": float(norms.median()) if len(norms) else 0.0,
        "clipped_share": float((norms > dp.clip).float().mean()) if len(norms) else 0.0,
    }
    return (total + noise) / expected, info


def plain_gradient(
    model: nn.Module, site: SiteData, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Non-private full-batch gradient of the mean loss over all images and views (flat)."""
    model.zero_grad()
    views, n = site.features.shape[:2]
    w = torch.ones(n) if class_weights is None else class_weights[site.labels]
    total = 0.0
    for v in range(views):
        for start in range(0, n, 4 * CHUNK):
            sl = slice(start, start + 4 * CHUNK)
            logits = model(site.features[v, sl])
            loss = F.cross_entropy(logits, site.labels[sl], reduction="none") * w[sl]
            total = total + loss.sum()
    (total / (views * n)).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def numpy_features(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))
