"""Evaluation: metrics with bootstrap confidence intervals, reader comparison, plots, inference."""

from fedxray.evaluation.metrics import Metrics, compute_metrics
from fedxray.evaluation.report import EvaluationReport, evaluate, plot_report

__all__ = ["EvaluationReport", "Metrics", "compute_metrics", "evaluate", "plot_report"]
