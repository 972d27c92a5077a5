"""fedxray: offline federated, differentially private chest X-ray classification."""

__version__ = "0.1.0"
