"""Evaluation: metrics with bootstrap confidence intervals, reader comparison, plots, inference.

Pure computation on arrays; reading models and shards is fedxray.steps' job.
"""

from fedxray.evaluation.metrics import Metrics, compute_metrics
from fedxray.evaluation.report import EvaluationReport, evaluate

__all__ = ["EvaluationReport", "Metrics", "compute_metrics", "evaluate"]
