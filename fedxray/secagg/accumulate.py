"""The flat layout of an encoded update, and streaming sums of uint64 vectors.

An update's tensors are laid end to end in one uint64 vector: first a 2-word control tensor
(the site's example count, and the constant 1), then the model's tensors sorted by name. Mask
streams run over this vector in this order, so every party derives the same words for the same
coordinate. After unmasking, the control words must equal (total examples, number of sites):
a wrong or missing reveal shows up there with probability 1 - 2^-64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

CONTROL = "__secagg_control__"
CONTROL_WORDS = 2  # [examples, 1]


@dataclass(frozen=True)
class FlatLayout:
    """(name, shape, offset, size) of each tensor inside the flat vector."""

    entries: tuple[tuple[str, tuple[int, ...], int, int], ...]
    size: int

    @classmethod
    def for_model(cls, shapes: Mapping[str, tuple[int, ...]]) -> FlatLayout:
        if CONTROL in shapes:
            raise ValueError(f"{CONTROL} is a reserved tensor name")
        entries, offset = [], 0
        for name, shape in [(CONTROL, (CONTROL_WORDS,)), *sorted(shapes.items())]:
            size = math.prod(shape)
            entries.append((name, tuple(int(s) for s in shape), offset, size))
            offset += size
        return cls(tuple(entries), offset)

    @property
    def model_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, shape, _, _ in self.entries if name != CONTROL}

    def tensor_layout(self, dtype: str = "uint64") -> dict[str, tuple[tuple[int, ...], str]]:
        """The form that fedxray.artifact.check_tensor_layout expects."""
        return {name: (shape, dtype) for name, shape, _, _ in self.entries}

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Shaped views (no copies) of each tensor inside ``flat``."""
        if flat.shape != (self.size,):
            raise ValueError("vector does not match the layout")
        return {name: flat[o : o + n].reshape(shape) for name, shape, o, n in self.entries}


class Accumulator:
    """Sum of uint64 vectors modulo 2^64; holds one vector whatever the number of inputs."""

    def __init__(self, layout: FlatLayout):
        self.layout = layout
        self.flat = np.zeros(layout.size, dtype=np.uint64)
        self._views = layout.views(self.flat)
        self.count = 0

    def add(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Add one input given as named tensors (views into a file's buffer are fine)."""
        for name, view in self._views.items():
            t = tensors[name]
            if t.shape != view.shape or t.dtype != np.uint64:
                raise ValueError(f"tensor {name} does not match the layout")
            np.add(view, t, out=view)
        self.count += 1

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(self._views)
