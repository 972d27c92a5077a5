"""Three checks of where the recipe's plateau comes from (REPORT.md section 9), non-private.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/research/plateau_checks.py --seeds 0,1

1. Preconditioning: is the 50-step recipe slow because some feature directions have little
   variance? The centred features are rescaled by exact (oracle) statistics: one global
   factor (E|z - c|^2 = 1), or one factor per scattering block (order 0; order 1 per scale;
   order 2 per scale pair), then trained with the recipe's steps (10 x 5 full-batch steps,
   momentum 0.9 reset each round, lr 10 / 2).
2. A non-linear head: converged RBF-kernel SVM against a linear SVM and the converged
   logistic regression of ceiling.py, on the same centred 128 px features.
3. Two resolutions: the 128 px / 8x8 and 64 px / 4x4 features side by side.

Exact statistics of the training patients stand in for the DP releases a site would need;
if even the oracle gains nothing beyond what a learning rate gives, the DP version cannot.
One JSON line per (check, variant, seed) goes to plateau.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import dataset
import numpy as np
import recipe
import torch
from experiment import features, scores
from heads import LinearHead

OUT = Path(__file__).resolve().parent / "plateau.jsonl"
ROUNDS, LOCAL_STEPS, MOMENTUM, BIAS_LR = 10, 5, 0.9, 2.0


def embedded(settings) -> torch.Tensor:
    """[N, K*P*P] per-example normalised (unit-norm) features of every image."""
    feats = features(settings, 0)[0]
    head = LinearHead(settings.output_shape)
    with torch.no_grad():
        return torch.cat(
            [
                head.embed(torch.from_numpy(feats[i : i + 512].astype(np.float32)))
                for i in range(0, len(feats), 512)
            ]
        )


def scattering_blocks(J: int = 3, L: int = 8) -> torch.Tensor:
    """Block id of each channel in kymatio's order (order 0; order 1 by j; order 2 by j1, j2)."""
    ids = [0] + [1 + j for j in range(J) for _ in range(L)]
    pairs = {p: 1 + J + i for i, p in enumerate((a, b) for a in range(J) for b in range(a + 1, J))}
    for j1 in range(J):
        for _ in range(L):
            for j2 in range(j1 + 1, J):
                ids += [pairs[(j1, j2)]] * L
    return torch.tensor(ids)


def rescaled(train: torch.Tensor, held: torch.Tensor, block: torch.Tensor | None, positions: int):
    """Scale centred features per block (or globally) so that E|z|^2 = 1 on the training set."""
    k = len(block) if block is not None else train.shape[1] // positions
    tr = train.view(len(train), k, positions)
    if block is None:
        scale = tr.pow(2).mean().sqrt().expand(k, 1)
    else:
        ms = tr.pow(2).mean((0, 2))
        per_block = torch.zeros(int(block.max()) + 1).index_add_(0, block, ms)
        per_block /= torch.bincount(block).float()
        scale = per_block.sqrt()[block][:, None]
    a = (tr / scale).view(len(train), -1)
    h = (held.view(len(held), k, positions) / scale).view(len(held), -1)
    norm = a.norm(dim=1).pow(2).mean().sqrt()
    return a / norm, h / norm


def recipe_steps(x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's non-private optimisation: mean loss over images, full batch."""
    w, b = torch.zeros(3, x.shape[1]), torch.zeros(3)
    rows = torch.arange(len(y))
    for _ in range(ROUNDS):
        vw, vb = torch.zeros_like(w), torch.zeros_like(b)
        for _ in range(LOCAL_STEPS):
            p = torch.softmax(x @ w.T + b, 1)
            p[rows, y] -= 1
            p /= len(y)
            vw, vb = MOMENTUM * vw + p.T @ x, MOMENTUM * vb + p.sum(0)
            w, b = w - lr * vw, b - BIAS_LR * vb
    return w, b


def svm_probs(kind: str, train, held, y, gamma: float = 1.0) -> np.ndarray:
    """Converged SVM (C = 10, precomputed kernel); softmax of the one-vs-rest scores."""
    from sklearn.svm import SVC

    if kind == "linear":
        k_train, k_held = train @ train.T, held @ train.T
    else:  # RBF with the bandwidth set to the median squared distance
        sq_t, sq_h = train.pow(2).sum(1), held.pow(2).sum(1)
        d_train = (sq_t[:, None] + sq_t[None] - 2 * train @ train.T).clamp_min(0)
        d_held = (sq_h[:, None] + sq_t[None] - 2 * held @ train.T).clamp_min(0)
        median = d_train.median()
        k_train, k_held = torch.exp(-gamma * d_train / median), torch.exp(-gamma * d_held / median)
    model = SVC(C=10.0, kernel="precomputed", decision_function_shape="ovr")
    model.fit(k_train.numpy(), y)
    return torch.softmax(torch.from_numpy(model.decision_function(k_held.numpy())) * 5, 1).numpy()


def logistic_probs(train, held, y) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=10.0, max_iter=3000).fit(train.numpy(), y)
    return model.predict_proba(held.numpy())


def check_split(seed: int, shard, z128: torch.Tensor, z64: torch.Tensor) -> None:
    """Every check on one split; one line per variant to stdout and to plateau.jsonl."""
    split = dataset.make_split(seed)
    tr, ho = split.train, split.holdout
    labels = torch.from_numpy(shard.labels.astype(np.int64))
    y, y_held, groups = labels[tr], shard.labels[ho].astype(np.int64), shard.patients[ho]

    def log(check: str, variant: str, probs: np.ndarray, started: float) -> None:
        m = scores(y_held, probs, shard.classes, groups)
        row = {"check": check, "variant": variant, "seed": seed} | m
        row["wall_s"] = round(time.monotonic() - started, 1)
        print(
            f"s{seed} {check:<14} {variant:<24} acc {m['accuracy']:.3f} "
            f"bAUC {m['binary_roc_auc']:.4f} MCC {m['mcc']:.3f}",
            flush=True,
        )
        with OUT.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def centred(z):
        mu = z[tr].mean(0)
        return z[tr] - mu, z[ho] - mu

    def stepped(x_tr, x_ho, lr):
        w, b = recipe_steps(x_tr, y, lr)
        return torch.softmax(x_ho @ w.T + b, 1).numpy()

    positions = recipe.FRONT.output_shape[1] ** 2
    c_tr, c_ho = centred(z128)
    for lr in (10.0, 30.0):
        t = time.monotonic()
        log("precondition", f"centred lr{lr:g}", stepped(c_tr, c_ho, lr), t)
    for name, block in (("global scale", None), ("per-block scale", scattering_blocks())):
        t = time.monotonic()
        x_tr, x_ho = rescaled(c_tr, c_ho, block, positions)
        log("precondition", f"{name} lr10", stepped(x_tr, x_ho, 10.0), t)
    y_np = y.numpy()
    t = time.monotonic()
    log("head", "logistic (converged)", logistic_probs(c_tr, c_ho, y_np), t)
    for kind in ("linear", "rbf"):
        t = time.monotonic()
        log("head", f"{kind} SVM", svm_probs(kind, c_tr, c_ho, y_np), t)
    both = torch.cat([z128, z64], 1) / np.sqrt(2)
    for name, z in (("64 px", z64), ("128 + 64 px", both)):
        x_tr, x_ho = centred(z)
        t = time.monotonic()
        log("resolution", f"{name} converged", logistic_probs(x_tr, x_ho, y_np), t)
        t = time.monotonic()
        log("resolution", f"{name} recipe steps", stepped(x_tr, x_ho, 10.0), t)


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1")
    a = p.parse_args(argv)
    shard = dataset.shard_at(recipe.FRONT.image_size)
    z128, z64 = embedded(recipe.FRONT), embedded(recipe.FRONT_64)
    for seed in (int(s) for s in a.seeds.split(",")):
        check_split(seed, shard, z128, z64)


if __name__ == "__main__":
    main()
