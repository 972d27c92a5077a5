"""Fixed-point encoding of example-weighted updates in Z_(2^64), and the overflow check.

A site with ``n`` examples sends ``enc(n * clip(x))``: each coordinate of its float update is
clipped to [-clip, clip], multiplied by ``n`` (at most the plan's ``max_examples``), scaled by
2^frac_bits and rounded stochastically (unbiased) to an integer, stored in two's complement as
uint64. Sums wrap modulo 2^64, so a sum is exact as long as the true integer total stays inside
[-2^63, 2^63); :func:`check_capacity` proves that for every admissible input before a federation
starts. The coordinator divides the decoded total by the total example count, which travels as
an extra masked integer, so it learns the weighted mean and the total, never one site's count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedxray.errors import FedxrayError

WORD_BITS = 64
HEADROOM_BITS = 2  # spare bits: covers the +1 of rounding up and leaves a margin
FRAC_BITS_RANGE = (8, 52)  # below 8 the grid is too coarse; above 52 float64 cannot round
MAX_EXAMPLES_LIMIT = 1 << 40
_CHUNK = 1 << 18  # elements per encoding step: bounds the float64 scratch memory


@dataclass(frozen=True)
class SecaggParams:
    """The plan's secure-aggregation settings, validated."""

    frac_bits: int
    clip: float
    max_examples: int
    strict: bool = False
    min_sites: int = 3

    @classmethod
    def from_settings(cls, settings: Mapping) -> SecaggParams:
        """Read ``plan.secagg`` (extra keys are ignored); bad values raise FedxrayError."""
        try:
            frac_bits = settings["frac_bits"]
            clip = float(settings["clip"])
            max_examples = settings["max_examples"]
            strict = settings.get("strict", False)
            min_sites = settings.get("min_sites", 3)
        except (KeyError, TypeError, ValueError):
            raise FedxrayError(
                "the plan's secure-aggregation settings are incomplete",
                hint="they need frac_bits, clip and max_examples",
            ) from None
        for name, value in (
            ("frac_bits", frac_bits),
            ("max_examples", max_examples),
            ("min_sites", min_sites),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise FedxrayError(f"secure aggregation: {name} must be an integer, got {value!r}")
        if not isinstance(strict, bool):
            raise FedxrayError(f"secure aggregation: strict must be true or false, got {strict!r}")
        lo, hi = FRAC_BITS_RANGE
        if not lo <= frac_bits <= hi:
            raise FedxrayError(f"secure aggregation: frac_bits must be in [{lo}, {hi}]")
        if not (math.isfinite(clip) and clip > 0):
            raise FedxrayError("secure aggregation: clip must be a positive number")
        if clip < 2.0**-frac_bits:  # every update would encode as zero
            raise FedxrayError(
                f"secure aggregation: clip {clip:g} is below one fixed-point step (2^-{frac_bits})"
            )
        if not 1 <= max_examples <= MAX_EXAMPLES_LIMIT:
            raise FedxrayError(
                f"secure aggregation: max_examples must be in [1, 2^40], got {max_examples}"
            )
        # 2 is an explicit opt-in of the plan (each of two survivors can then recover the
        # other's update from the sum, leaving only DP to protect it); 1 would publish it.
        if min_sites < 2:
            raise FedxrayError(
                f"secure aggregation needs at least 2 sites per round, got min_sites {min_sites}",
                hint="3 is the safe default; 2 leaves each of two sites only DP against the other",
            )
        return cls(frac_bits, clip, max_examples, strict, min_sites)

    @property
    def value_bits(self) -> float:
        """log2 of the width of one site's encoded range: 2 * clip * max_examples * 2^f."""
        return self.frac_bits + math.log2(2.0 * self.clip * self.max_examples)

    @property
    def resolution(self) -> float:
        """One unit of the fixed-point grid (before dividing by the example total)."""
        return 2.0**-self.frac_bits


@dataclass(frozen=True)
class Capacity:
    bits_needed: float  # f + log2(2 clip max_examples) + log2(sites) + headroom
    max_sites: int  # the most sites these parameters can sum without overflow


def max_sites_for(params: SecaggParams) -> int:
    free = WORD_BITS - HEADROOM_BITS - params.value_bits
    return int(2.0 ** min(free, WORD_BITS)) if free >= 0 else 0  # 2.0**1000+ would overflow


def check_capacity(settings: Mapping | SecaggParams, n_sites: int) -> Capacity:
    """Refuse parameters for which the sum of ``n_sites`` updates could overflow 64 bits.

    Condition: frac_bits + log2(2 * clip * max_examples) + log2(n_sites) + 2 <= 64.
    """
    params = (
        settings if isinstance(settings, SecaggParams) else SecaggParams.from_settings(settings)
    )
    if n_sites < 1:
        raise FedxrayError("secure aggregation needs at least one site")
    needed = params.value_bits + math.log2(n_sites) + HEADROOM_BITS
    limit = max_sites_for(params)
    if needed > WORD_BITS or n_sites > limit:
        raise FedxrayError(
            f"secure aggregation could overflow: {n_sites} sites x clip {params.clip:g} x "
            f"{params.max_examples} examples at {params.frac_bits} fractional bits needs "
            f"{needed:.1f} of {WORD_BITS} bits",
            hint="lower frac_bits, the clip range or max_examples"
            + (f" (these allow at most {limit} sites)" if limit else ""),
        )
    return Capacity(needed, limit)


def encode_into(
    out: np.ndarray,
    values: np.ndarray,
    count: int,
    params: SecaggParams,
    rng: np.random.Generator,
) -> int:
    """Write ``enc(count * clip(values))`` (flattened, C order) into the uint64 vector ``out``.

    Returns how many coordinates were clipped. Non-finite values or a count outside
    [1, max_examples] raise FedxrayError: they would make the sum meaningless.
    """
    flat = np.asarray(values).reshape(-1)
    if out.dtype != np.uint64 or out.shape != (flat.size,):
        raise ValueError("out must be a uint64 vector as long as values")
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise FedxrayError(f"the example count must be an integer, got {count!r}")
    if not 1 <= count <= params.max_examples:
        raise FedxrayError(
            f"the update reports {count} examples; the plan accepts 1 to {params.max_examples}",
            hint="the plan's max_examples caps each site's weight in the average",
        )
    scale = float(count) * 2.0**params.frac_bits
    clipped = 0
    buf = np.empty(min(_CHUNK, flat.size), dtype=np.float64)
    noise = np.empty_like(buf)
    words = out.view(np.int64)  # two's complement: the int64 value is the uint64 word
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        v, u = buf[: part.size], noise[: part.size]
        v[:] = part
        # A sum is finite unless a value is NaN or infinite (or the values are so large that
        # the sum overflows, hence the exact check then): no temporary array in the common case.
        with np.errstate(over="ignore", invalid="ignore"):
            total = v.sum()
        if not math.isfinite(total) and not np.isfinite(v).all():
            raise FedxrayError("the update has non-finite values (NaN or infinity)")
        if v.min() < -params.clip or v.max() > params.clip:
            clipped += int(np.count_nonzero(np.abs(v) > params.clip))
            np.clip(v, -params.clip, params.clip, out=v)
        v *= scale
        # Stochastic rounding: floor(v + U[0,1)) rounds up with probability frac(v), so the
        # expected value is exact and the error of one coordinate is below one grid unit.
        rng.random(out=u)
        v += u
        np.floor(v, out=v)
        np.copyto(words[start : start + part.size], v, casting="unsafe")  # exact: integers
    return clipped


def decode(words: np.ndarray, params: SecaggParams) -> np.ndarray:
    """Signed fixed point (uint64 two's complement) -> float64, still multiplied by the weights."""
    return np.asarray(words, dtype=np.uint64).view(np.int64).astype(np.float64) * params.resolution
