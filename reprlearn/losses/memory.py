"""Cross-batch memory (XBM, Wang et al. 2020): an in-batch pair loss whose negatives and positives reach past the
batch, into the embeddings of the last batches.

A FIFO of the last `memory_size` embeddings and labels (no gradient) lives beside the loss. Each step the batch
enters the memory first, then the wrapped loss scores the batch as anchors against every embedding the memory
holds (the batch's own copies included, each anchor's own copy left out): pytorch-metric-learning's
`CrossBatchMemory` semantics, so the numbers are PML's for the same sequence of batches. Before `warmup_steps`
steps the memory fills but the loss is the batch's own (the paper starts the memory after a warm-up: early
embeddings drift too fast to be useful negatives). Under `tf.distribute` the memory takes the global batch, the
same on every replica.

The wrapped loss must score pairs row by row (each anchor's row of the distance matrix): the pair losses
(Multi-Similarity, NT-Xent, Circle, SupCon) and the in-batch contrastive loss. The state is kept in variables;
`state()` and `restore()` let a run's checkpoint carry it, so a resumed run scores exactly as before.

Example:
    loss = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=64, memory_size=2048)
    model.compile(optimizer="adam", loss=loss)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from reprlearn.losses.in_batch import InBatchLoss
from reprlearn.ops.distances import cross_distance
from reprlearn.ops.labels import check_batch, labels_vector, nan_unless_finite, pair_masks
from reprlearn.ops.replicas import assign_on_every_replica, per_replica_share

# The loss classes whose `batch_loss` reads the distance matrix row by row (anchors × candidates).
MEMORY_LOSSES = ("InBatchContrastiveLoss", "MultiSimilarityLoss", "NTXentLoss", "CircleLoss",
                 "SupervisedContrastiveLoss")


@keras.saving.register_keras_serializable(package="reprlearn")
class CrossBatchMemory(keras.losses.Loss):
    """An in-batch pair loss scored against a memory of the last batches (see the module).

    Example:
        CrossBatchMemory(NTXentLoss(temperature=0.1), embedding_size=32, memory_size=1024)(labels, embeddings)

    Args:
        loss: the wrapped loss, one of `MEMORY_LOSSES` (or its serialized config).
        embedding_size: d, the embeddings' width.
        memory_size: M, the embeddings kept (the current batch's included); at least the batch size.
        warmup_steps: steps scored on the batch alone while the memory fills.

    Returns (when called):
        The wrapped loss's value over the batch's anchors, in the embeddings' dtype (NaN for a non-finite input).
    """

    def __init__(self, loss, embedding_size: int, memory_size: int, warmup_steps: int = 0,
                 name: str = "cross_batch_memory", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, InBatchLoss) or type(loss).__name__ not in MEMORY_LOSSES:
            raise ValueError(f"loss must be one of {list(MEMORY_LOSSES)} (a loss that scores each anchor's row of "
                             f"pairs). Received: loss={loss!r}")
        for key, value in (("embedding_size", embedding_size), ("memory_size", memory_size)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be an int >= 1. Received: {key}={value!r}")
        if not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0. Received: warmup_steps={warmup_steps!r}")
        self.loss, self.embedding_size = loss, int(embedding_size)
        self.memory_size, self.warmup_steps = int(memory_size), int(warmup_steps)
        self.embeddings = tf.Variable(tf.zeros([self.memory_size, self.embedding_size]), trainable=False,
                                      name="memory_embeddings")
        self.labels = tf.Variable(tf.zeros([self.memory_size], tf.int64), trainable=False, name="memory_labels")
        self.filled = tf.Variable(0, dtype=tf.int64, trainable=False, name="memory_filled")
        self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="memory_position")
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="memory_steps")

    def call(self, y_true, y_pred):
        check_batch(y_true, y_pred, "y_true", "y_pred")
        labels, embeddings = self.loss._batch(y_true, y_pred)
        labels, embeddings = tf.cast(labels_vector(labels), tf.int64), tf.cast(embeddings, tf.float32)
        count = tf.shape(embeddings, out_type=tf.int64)[0]
        tf.debugging.assert_less_equal(count, tf.constant(self.memory_size, tf.int64), message=(
            f"memory_size must hold a whole batch: raise train.memory_size above the batch size. Received: "
            f"memory_size={self.memory_size}"))
        # The batch enters first (PML's order): slots position … position + n − 1, round the ring.
        slots = (self.position + tf.range(count)) % self.memory_size
        memory = tf.tensor_scatter_nd_update(self.embeddings, slots[:, None], tf.stop_gradient(embeddings))
        memory_labels = tf.tensor_scatter_nd_update(self.labels, slots[:, None], labels)
        filled = tf.minimum(self.filled + count, self.memory_size)
        assign_on_every_replica([self.embeddings, self.labels, self.filled, self.position, self.steps],
                                [memory, memory_labels, filled, (self.position + count) % self.memory_size,
                                 self.steps + 1])
        with_memory = self._against(embeddings, labels, memory, memory_labels, filled, slots)
        if self.warmup_steps:
            value = tf.cond(self.steps - 1 < self.warmup_steps, lambda: self._batch_alone(embeddings, labels),
                            lambda: with_memory)
        else:
            value = with_memory
        return per_replica_share(tf.cast(nan_unless_finite(value, embeddings), y_pred.dtype))

    def _against(self, embeddings, labels, memory, memory_labels, filled, slots):
        """The wrapped loss of the batch's anchors against the memory's filled slots, own copies left out."""
        distances = cross_distance(embeddings, memory, self.loss.distance)
        held = tf.range(self.memory_size, dtype=tf.int64)[None, :] < filled
        same = tf.equal(labels[:, None], memory_labels[None, :])
        own = tf.equal(slots[:, None], tf.range(self.memory_size, dtype=tf.int64)[None, :])
        positive = same & held & ~own
        negative = ~same & held
        return self.loss.batch_loss(distances, *self.loss._scored_pairs(distances, positive, negative))[0]

    def _batch_alone(self, embeddings, labels):
        distances = cross_distance(embeddings, embeddings, self.loss.distance)
        return self.loss.batch_loss(distances, *self.loss._scored_pairs(distances, *pair_masks(labels)))[0]

    def state(self) -> dict[str, np.ndarray]:
        """The memory as arrays (for a checkpoint)."""
        return {name: getattr(self, name).numpy() for name in ("embeddings", "labels", "filled", "position", "steps")}

    def restore(self, state: dict) -> None:
        """Puts back a memory `state()` returned."""
        for name in ("embeddings", "labels", "filled", "position", "steps"):
            getattr(self, name).assign(state[name])

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss),
                "embedding_size": self.embedding_size, "memory_size": self.memory_size,
                "warmup_steps": self.warmup_steps}
