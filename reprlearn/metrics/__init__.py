"""Evaluation: retrieval metrics (exact, chunked) and verification metrics (pairs)."""

from reprlearn.metrics.retrieval import retrieval_metrics
from reprlearn.metrics.verification import roc_curve, sample_pairs, verification_metrics

__all__ = ["retrieval_metrics", "roc_curve", "sample_pairs", "verification_metrics"]
