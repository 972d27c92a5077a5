"""The recommended recipe: one source for the harness's defaults and for selecting its runs.

See REPORT.md section 3 for the reasons behind each value.
"""

from __future__ import annotations

from federation import Recipe
from scatter import ScatterSettings

# 128 px, J = 3 (finest wavelet 2 px, coarsest 16 px), L = 8, order 2, log, 8 x 8 pooled map.
FRONT = ScatterSettings(image_size=128, J=3, L=8, max_order=2, log=True, pool=8)
# The same recipe at 64 px / 4 x 4: cheaper features, same accuracy, lower binary AUC.
FRONT_64 = ScatterSettings(image_size=64, J=3, L=8, max_order=2, log=True, pool=4)
HEAD = "linear"
RECIPE = Recipe(
    rounds=10,
    local_steps=5,
    lr=10.0,
    bias_lr=2.0,
    momentum=0.9,
    clip=1.0,
    sample_rate=1.0,
    target_epsilon=8.0,
    delta=1e-5,
    center_sigma=5.0,
)
