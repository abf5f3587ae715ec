"""Evaluation (retrieval, verification) and training-time metrics (active fraction, pair distances)."""

from reprlearn.metrics.cross_view import cross_view_metrics
from reprlearn.metrics.knn import weighted_knn_accuracy
from reprlearn.metrics.retrieval import retrieval_metrics
from reprlearn.metrics.training import ActiveFraction, InBatchRecall, MeanNegativeDistance, MeanPositiveDistance
from reprlearn.metrics.verification import roc_curve, sample_pairs, verification_metrics

__all__ = ["ActiveFraction", "InBatchRecall", "MeanNegativeDistance", "MeanPositiveDistance", "cross_view_metrics",
           "retrieval_metrics", "roc_curve", "sample_pairs", "verification_metrics", "weighted_knn_accuracy"]
