"""The model contract: what fedxray needs to know to train a model in a federation.

A model is a :class:`ModelSpec`. The built-in ones are registered in fedxray.models.registry;
other packages add theirs through the ``fedxray.models`` entry-point group, e.g. in their
``pyproject.toml``::

    [project.entry-points."fedxray.models"]
    my-model = "my_package.fedxray_model:SPEC"

where ``SPEC`` is a ModelSpec (or a function without arguments that returns one) whose
``name`` is the entry point's name. The contract:

* ``build(num_classes, in_channels, image_size)`` returns a freshly initialised torch module
  that maps a batch of the model's input view to logits ``[batch, num_classes]``; it draws its
  initial weights from torch's global generator (fedxray seeds it).
* ``input_view(in_channels)`` returns the function that turns a shard's images (uint8 or
  uint16 ``[N, H, W]``, H = W = the plan's image size) into the model's input: by default the
  images themselves, scaled and normalised (fedxray.models.inputs.ImageInput); a model may read
  any fixed, data-independent view of them (a 1-D profile, features). It is called as
  ``view(images, device, augment)``; ``augment`` jitters images in [0, 1] during training and
  a view may ignore it.
* ``image_sizes`` (smallest, default) and ``in_channels`` (accepted channel counts) bound the
  plan's model settings.
* Differentially private training clips per example: every trainable layer must be one the DP
  engine supports (Conv2d with groups=1, Linear, GroupNorm); `fedxray init` builds the model
  and refuses the plan otherwise.
* Only trainable state travels: parameters with ``requires_grad=False`` and non-persistent
  buffers are a fixed, data-independent part of the model (``build`` must make them the same
  at every site, whatever the seed); they are neither trained nor sent. ``front_end`` may name
  such a submodule whose output depends on the input alone, so that it can be computed once
  per image and cached; only what follows it is trained and travels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedxray.models.inputs import ImageInput

Builder = Callable[[int, int, int], nn.Module]  # (num_classes, in_channels, image_size)
InputView = Callable[..., Any]  # (images, device, augment) -> model input


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Builder
    image_sizes: tuple[int, int]  # (smallest, default) in pixels
    in_channels: tuple[int, ...] = (1,)
    input_view: Callable[[int], InputView] = ImageInput
    front_end: str | None = None  # a fixed submodule whose output may be cached
    description: str = ""

    @property
    def min_image_size(self) -> int:
        return self.image_sizes[0]

    @property
    def default_image_size(self) -> int:
        return self.image_sizes[1]
