"""The lifted structured loss as a layer, for Functional models that take labels as an input."""

from __future__ import annotations

import keras
import tensorflow as tf

from reprlearn.losses.lifted import lifted_struct_loss
from reprlearn.ops.distances import check_margin


@keras.saving.register_keras_serializable(package="reprlearn")
class LiftedStructLossLayer(keras.layers.Layer):
    """Adds the lifted structured loss of `[embeddings, labels]` with `add_loss`; passes the embeddings through.

    Example:
        images, labels = keras.Input((28, 28, 1)), keras.Input((), dtype="int32")
        embeddings = LiftedStructLossLayer(margin=1.0)([tower(images), labels])
        model = keras.Model([images, labels], embeddings)
        model.compile(optimizer="adam")          # no loss argument: the layer adds it
        model.fit([x, y], epochs=1)

    Args:
        margin: α, the margin on negative distances.
        weight: the factor the loss is multiplied by before `add_loss`.

    Returns:
        The embeddings, unchanged.
    """

    def __init__(self, margin: float = 1.0, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.margin = check_margin(margin)
        if not weight > 0:
            raise ValueError(f"weight must be > 0. Received: weight={weight!r}")
        self.weight = float(weight)

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(f"LiftedStructLossLayer takes [embeddings, labels]. Received: inputs={inputs!r}")
        embeddings, labels = inputs
        loss = lifted_struct_loss(labels, tf.cast(embeddings, tf.float32), self.margin)
        self.add_loss(self.weight * loss)
        return embeddings

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "weight": self.weight}
