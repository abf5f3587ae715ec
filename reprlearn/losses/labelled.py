"""The base of reprlearn's Keras loss classes: `y_true` are class (or pair) ids, checked before Keras converts them."""

from __future__ import annotations

import keras

from reprlearn.ops.labels import check_label_values


class LabelledLoss(keras.losses.Loss):
    """A Keras loss whose `y_true` are integer ids: names (strings) are refused at the door with the fix, where
    Keras would convert them to the embeddings' float dtype and fail inside TensorFlow."""

    def __call__(self, y_true, y_pred, sample_weight=None):
        check_label_values(y_true, "y_true")
        return super().__call__(y_true, y_pred, sample_weight)
