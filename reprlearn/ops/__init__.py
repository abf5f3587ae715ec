"""Tensor maths every layer above uses: distances, label masks, gathers across replicas.

Example:
    from reprlearn.ops import pairwise_distance
    distances = pairwise_distance(embeddings, "angular")   # [N, N]
"""

from reprlearn.ops.distances import ALIASES, METRICS, canonical_metric, paired_distance, pairwise_distance

__all__ = ["ALIASES", "METRICS", "canonical_metric", "paired_distance", "pairwise_distance"]
