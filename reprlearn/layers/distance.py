"""The distance head of a Siamese pair model."""

from __future__ import annotations

import keras

from reprlearn.ops.distances import canonical_metric, paired_distance


@keras.saving.register_keras_serializable(package="reprlearn")
class PairDistance(keras.layers.Layer):
    """Distance between two embedding batches, row by row.

    Example:
        d = PairDistance("L2")([embedding_a, embedding_b])   # [B]

    Args:
        metric: `"L2"` (zero gradient at zero distance), `"squared-L2"` or `"angular"` (alias `"cosine"`).

    Returns:
        `[B]` float32 distances.
    """

    def __init__(self, metric: str = "L2", **kwargs):
        super().__init__(**kwargs)
        self.metric = canonical_metric(metric)

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"PairDistance takes a list of two tensors. Received: {type(inputs).__name__}")
        return paired_distance(inputs[0], inputs[1], self.metric)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)

    def get_config(self):
        return {**super().get_config(), "metric": self.metric}
