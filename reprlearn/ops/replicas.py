"""The global batch under `tf.distribute`: every replica's embeddings and labels, in replica order.

Under `MirroredStrategy` or `MultiWorkerMirroredStrategy` each replica holds only its slice of
the batch, so a loss that mines inside its slice mines within `batch / replicas` examples
(tensorflow/tensorflow#47344). `global_batch` all-gathers the slices so that each replica
evaluates the loss of the whole batch. The gathered copies carry no gradient; only the replica's
own slice is its live tensor, so replica r's gradient is `∂L/∂e_r`, and the sum over replicas
(what the optimizer's all-reduce computes) is the single-device gradient of `L` on the global batch.

Keras and `tf.distribute` sum the replicas' loss values and gradients (each replica's value is
meant to be its share of the global loss). `per_replica_share` returns `L / R` as the value
while keeping `∂L/∂e_r` as the gradient, so the logged loss is `L` and the step is the
single-device step.

Example:
    labels, embeddings = global_batch(labels, embeddings)   # inside strategy.run or model.fit
"""

from __future__ import annotations

import tensorflow as tf


def replica_count() -> int:
    """The number of replicas in sync in the current replica context (1 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def global_batch(labels: tf.Tensor, embeddings: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(labels, embeddings)` of every replica, concatenated in replica order; the inputs when there is one replica.

    Only this replica's slice of the returned embeddings is differentiable (it is `embeddings` itself).
    Replicas may hold slices of different sizes.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return labels, embeddings
    local_size = tf.shape(embeddings)[:1]
    sizes = context.all_gather(local_size, axis=0)
    start = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    gathered = tf.stop_gradient(context.all_gather(embeddings, axis=0))
    every_embedding = tf.concat([gathered[:start], embeddings, gathered[start + local_size[0]:]], axis=0)
    return context.all_gather(labels, axis=0), every_embedding


def global_rows(tensor: tf.Tensor) -> tf.Tensor:
    """Every replica's rows of `tensor` `[n, ...]`, concatenated in replica order; only this replica's rows keep their
    gradient (see `global_batch`). The rows of several tensors gathered together: concatenate them on the last axis
    first, so a step runs one gather (collectives of one step run in the same order on every replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    local_size = tf.shape(tensor)[:1]
    sizes = context.all_gather(local_size, axis=0)
    with tf.control_dependencies([sizes]):
        gathered = tf.stop_gradient(context.all_gather(tensor, axis=0))
    start = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    return tf.concat([gathered[:start], tensor, gathered[start + local_size[0]:]], axis=0)


def per_replica_share(value: tf.Tensor) -> tf.Tensor:
    """`value / R` with the gradient of `value`: summed over R replicas, the global loss and its gradient."""
    replicas = replica_count()
    if replicas == 1:
        return value
    return value + tf.stop_gradient(value / replicas - value)


def assign_on_every_replica(variables, values) -> None:
    """Assigns `values[i]` to `variables[i]` from inside a training step, on one device or under `tf.distribute`.

    The values must be equal on every replica (they are computed from mirrored weights and the global batch):
    under a strategy the assignment goes through the cross-replica context, as an optimizer's update does, since
    a mirrored variable refuses a plain `assign` in a replica context. Keras variables are assigned through their
    backend variable.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        for variable, value in zip(variables, values):
            variable.assign(value)
        return

    def merged(strategy, pairs):
        for variable, value in pairs:
            backend_variable = variable if isinstance(variable, tf.Variable) else variable.value
            strategy.extended.update(backend_variable, lambda v, x: v.assign(x), args=(value,), group=False)

    context.merge_call(merged, args=(list(zip(variables, values)),))
