"""JRD's joint representation similarity (Chu et al., ICML 2020): a regulariser over several layers at once.

For each layer l, `D^l_ij = ||z^l_i − z^l_j||²`; its bandwidth `b_l` is the mean off-diagonal
`D^l` (no gradient); its kernel `k^l_ij` is the mean of `exp(−D^l_ij / w)` over `w ∈ {b/2, b, 2b}`
(one bandwidth `b` for a layer marked single, e.g. the classifier's logits). The joint kernel
`K_ij = Π_l k^l_ij` is high only for pairs similar in every layer; JRS is its mean over ordered
pairs from different classes. Added to AM-Softmax as `L_AM + α·JRS`, it pushes classes apart in the
joint distribution of the layers without squeezing each class into a point.

Example:
    jrs = joint_representation_similarity(labels, [pooled_features, embeddings, cosines],
                                          single_bandwidth=[False, False, True])
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from reprlearn.losses.labelled import LabelledLoss
from reprlearn.ops.distances import pairwise_distance
from reprlearn.ops.labels import labels_vector

BANDWIDTH_FACTORS = (0.5, 1.0, 2.0)


def _layer_kernel(features, single_bandwidth: bool) -> tf.Tensor:
    """`[B, B]` multi-bandwidth Gaussian kernel of one layer's flattened features."""
    z = tf.reshape(tf.cast(features, tf.float32), [tf.shape(features)[0], -1])
    d = pairwise_distance(z, "squared-L2")
    n = tf.cast(tf.shape(d)[0], tf.float32)
    # Mean over off-diagonal pairs; the diagonal is 0. No gradient through the bandwidth, as in JRD.
    # A batch of identical features has b = 0: the floor keeps exp(−0 / w) = 1 instead of NaN.
    b = tf.stop_gradient(tf.maximum(tf.math.divide_no_nan(tf.reduce_sum(d), n * (n - 1.0)), 1e-12))
    factors = (1.0,) if single_bandwidth else BANDWIDTH_FACTORS
    return tf.add_n([tf.exp(-d / (b * f)) for f in factors]) / float(len(factors))


def joint_representation_similarity(labels, features: Sequence, single_bandwidth: Sequence[bool] | None = None
                                    ) -> tf.Tensor:
    """JRS: the mean joint kernel `Π_l k^l_ij` over ordered pairs with different labels.

    Args:
        labels: `[B]` or `[B, 1]` class ids.
        features: the layers' outputs, each `[B, ...]` (flattened per example); at least one.
        single_bandwidth: per layer, True for one bandwidth `b` instead of `{b/2, b, 2b}` (default: all False).

    Returns:
        A float32 scalar in [0, 1]; 0 when the batch has one class.
    """
    features = list(features)
    if not features:
        raise ValueError("joint_representation_similarity needs at least one layer. Received: features=[]")
    single_bandwidth = [False] * len(features) if single_bandwidth is None else list(single_bandwidth)
    if len(single_bandwidth) != len(features):
        raise ValueError(f"single_bandwidth needs one flag per layer ({len(features)}). "
                         f"Received: single_bandwidth={single_bandwidth}")
    joint = _layer_kernel(features[0], single_bandwidth[0])
    for layer, single in zip(features[1:], single_bandwidth[1:]):
        joint = joint * _layer_kernel(layer, single)
    labels = labels_vector(labels)
    different = tf.cast(tf.not_equal(labels[:, None], labels[None, :]), tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(joint * different), tf.reduce_sum(different))


@keras.saving.register_keras_serializable(package="reprlearn")
class JointRepresentationSimilarity(LabelledLoss):
    """JRS as a Keras loss on one packed output: `y_pred` is the layers' flattened features side by side.

    Example:
        packed = keras.layers.Concatenate()([keras.layers.Flatten()(pool2), embeddings, cosines])
        loss = JointRepresentationSimilarity(part_sizes=[3136, 64, 5], single_bandwidth=[False, False, True])

    Args:
        part_sizes: the width of each layer's part of `y_pred`, in order (at least two layers: JRD is joint).
        single_bandwidth: per part, as in `joint_representation_similarity`.
    """

    def __init__(self, part_sizes: Sequence[int], single_bandwidth: Sequence[bool] | None = None,
                 name: str = "joint_representation_similarity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.part_sizes = [int(size) for size in part_sizes]
        if len(self.part_sizes) < 2 or min(self.part_sizes) < 1:
            raise ValueError(f"part_sizes needs at least two layers, each of width >= 1. "
                             f"Received: part_sizes={list(part_sizes)}")
        self.single_bandwidth = ([False] * len(self.part_sizes) if single_bandwidth is None
                                 else [bool(flag) for flag in single_bandwidth])
        if len(self.single_bandwidth) != len(self.part_sizes):
            raise ValueError(f"single_bandwidth needs one flag per part ({len(self.part_sizes)}). "
                             f"Received: single_bandwidth={single_bandwidth}")

    def call(self, y_true, y_pred):
        parts = tf.split(tf.cast(y_pred, tf.float32), self.part_sizes, axis=-1)
        return tf.cast(joint_representation_similarity(y_true, parts, self.single_bandwidth), y_pred.dtype)

    def get_config(self):
        return {**super().get_config(), "part_sizes": self.part_sizes, "single_bandwidth": self.single_bandwidth}
