"""Synthetic paediatric chest radiograph phantoms: the project's self-contained sample data."""

from fedxray.sampledata.phantom import LABELS, render
from fedxray.sampledata.sites import SITES, SiteSpec, generate, generate_site

__all__ = ["LABELS", "SITES", "SiteSpec", "generate", "generate_site", "render"]
