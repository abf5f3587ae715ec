"""One batch's intermediate tensors, kept by an in-batch loss for the training metrics of the same step."""

from __future__ import annotations


class BatchMemo:
    """What a loss computed for the batch `y_pred` (distances, pair masks, its active fraction), until the next batch.

    Keras calls a compiled model's loss and then its metrics on the same `y_pred` tensor within one
    train step. A metric that finds its `y_pred` here reads the loss's numbers instead of computing the
    distance matrix (and, for triplets, the mining) again. Any other tensor is a miss, and the metric
    computes for itself, so the metrics stay correct on their own or with a loss they were not given.

    Example:
        loss = TripletSemiHardLoss()
        loss(labels, embeddings)
        loss.memo.get(embeddings)["distances"]   # the [N, N] matrix the loss used
    """

    def __init__(self):
        self._y_pred, self._values = None, None

    def keep(self, y_pred, **values) -> None:
        """Remembers `values` (tensors, or zero-argument functions computing them) for the batch `y_pred`."""
        self._y_pred, self._values = y_pred, values

    def get(self, y_pred) -> dict | None:
        """The values kept for exactly this `y_pred` tensor, or None."""
        return self._values if self._values is not None and self._y_pred is y_pred else None
