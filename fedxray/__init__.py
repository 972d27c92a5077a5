"""fedxray: offline federated, differentially private chest X-ray classification over signed files."""

__version__ = "0.1.0"
