"""How a non-square image is fitted into the model's square input: the plan's
``model.geometry`` (fedxray.imaging.normalize does it; docs/data.md, "Pad or stretch, never
crop")."""

GEOMETRIES = ("pad", "stretch")
DEFAULT_GEOMETRY = "pad"  # plans and shards that name none, and prep without a plan
