"""How a non-square image is fitted into the model's square input: the plan's
``model.geometry`` (fedxray.imaging.normalize does it; docs/data.md, "Pad or stretch")."""

GEOMETRIES = ("pad", "stretch")  # the first is the default: plans and shards without one
