"""Label vectors and the positive/negative pair masks every in-batch loss and miner starts from."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def labels_vector(y) -> tf.Tensor:
    """`[B]` or `[B, 1]` labels of any numeric or bool dtype, as a `[B]` tensor."""
    return tf.reshape(tf.convert_to_tensor(y), [-1])


def pair_masks(labels) -> tuple[tf.Tensor, tf.Tensor]:
    """`[N, N]` bool masks of ordered positive pairs (same label, i ≠ j) and negative pairs (different labels).

    Example:
        positive, negative = pair_masks([0, 0, 1])
        # positive[0, 1] and positive[1, 0] are True; negative[0, 2] is True; the diagonal is False in both.
    """
    labels = labels_vector(labels)
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.cast(tf.eye(tf.shape(labels)[0]), tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


# Slot widths: when no row has more positives than a width, per-positive work can use `[N, width]`.
SLOT_WIDTHS = (16, 32)


def by_positive_count(positive: tf.Tensor, on_slots, otherwise, slots_only: bool = False):
    """`on_slots(16)()` when no row of `positive` has more than 16 positives, else `on_slots(32)()` when none
    has more than 32, else `otherwise()`; chosen inside the graph, so each must return the same structure.

    `slots_only=True` takes 32 slots where it would take `otherwise` (valid only up to 32 positives).
    """
    most_positives = tf.reduce_max(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1))
    small, large = SLOT_WIDTHS
    beyond = on_slots(large) if slots_only else (
        lambda: tf.cond(most_positives <= large, on_slots(large), otherwise))
    return tf.cond(most_positives <= small, on_slots(small), beyond)


def positive_slots(positive: tf.Tensor, width: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Each row's positive columns, ascending, in `width` slots: `(columns [N, width] int32, filled [N, width])`.

    Rows with fewer positives leave slots unfilled (their column is a valid index, to be masked out);
    rows with more lose the rest, so call it with `width` >= the largest positive count.
    """
    n = tf.shape(positive)[0]
    # top_k of (n − column) on the positives lists them by ascending column; zeros mark empty slots.
    score = tf.where(positive, n - tf.range(n)[None, :], 0)
    score = tf.pad(score, [[0, 0], [0, tf.maximum(width - n, 0)]])
    slot_score, columns = tf.math.top_k(score, k=width)
    return tf.minimum(columns, n - 1), slot_score > 0


def check_label_values(labels, name: str = "labels") -> None:
    """Refuses class ids that are not numbers (names as strings) with the fix, before TensorFlow's own conversion
    fails somewhere inside with "could not convert string to float"."""
    dtype = getattr(labels, "dtype", None)
    if dtype is None and isinstance(labels, (list, tuple)):
        dtype = np.asarray(labels).dtype
    if dtype is None:
        return
    if dtype == tf.string or (isinstance(dtype, np.dtype) and dtype.kind in "USO"):
        first = np.asarray(labels).reshape(-1)[:1].tolist() if not isinstance(labels, tf.Tensor) else ["..."]
        raise ValueError(f"{name} must be integer class ids, not names; map the names to ids with "
                         f"ids = np.unique(names, return_inverse=True)[1]. Received: {name} of {dtype} values, "
                         f"e.g. {first[0] if first else None!r}")


def check_batch(labels, embeddings, labels_name: str = "labels",
                embeddings_name: str = "embeddings") -> tuple[tf.Tensor, tf.Tensor]:
    """A loss's inputs checked at its door: embeddings `[N, d]`, class ids `[N]` or `[N, 1]`, one per row.

    Only what the static shapes tell is checked, so the check costs nothing inside a traced step (and
    nothing is asserted at run time under XLA). One-hot labels are refused with how to convert them.

    Example:
        labels, embeddings = check_batch([0, 0, 1], tf.zeros([3, 8]))

    Returns:
        The two inputs as tensors.

    Raises:
        ValueError: naming the argument and the shapes received.
    """
    check_label_values(labels, labels_name)
    labels, embeddings = tf.convert_to_tensor(labels), tf.convert_to_tensor(embeddings)
    if embeddings.shape.rank is not None and embeddings.shape.rank != 2:
        raise ValueError(f"{embeddings_name} must be [N, d], one row per item. "
                         f"Received: {embeddings_name}.shape={tuple(embeddings.shape)}")
    if labels.shape.rank is not None:
        if labels.shape.rank == 2 and labels.shape[1] is not None and labels.shape[1] > 1:
            raise ValueError(f"{labels_name} must be class ids [N] or [N, 1], not one-hot [N, C]: convert them with "
                             f"np.argmax({labels_name}, axis=1). Received: {labels_name}.shape={tuple(labels.shape)}")
        if labels.shape.rank not in (1, 2):
            raise ValueError(f"{labels_name} must be class ids [N] or [N, 1]. "
                             f"Received: {labels_name}.shape={tuple(labels.shape)}")
    rows_labels, rows_embeddings = labels.shape[:1].num_elements(), embeddings.shape[:1].num_elements()
    if rows_labels is not None and rows_embeddings is not None and rows_labels != rows_embeddings:
        raise ValueError(f"{labels_name} and {embeddings_name} must have one row per item. Received: "
                         f"{labels_name}.shape={tuple(labels.shape)}, "
                         f"{embeddings_name}.shape={tuple(embeddings.shape)}")
    return labels, embeddings


def nan_unless_finite(value: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
    """`value`, or NaN when any embedding entry is NaN or inf: a non-finite input never gives a finite loss.

    The losses mask pairs and rows, which would otherwise hide a NaN row behind a finite number while
    every gradient turns NaN; a NaN loss is what training (and `StopOnNonFiniteLoss`) can see.
    """
    finite = tf.reduce_all(tf.math.is_finite(embeddings))
    return tf.where(finite, value, tf.constant(float("nan"), value.dtype))


def check_class_ids(labels, classes, caller: str) -> tf.Tensor:
    """`labels` as `[N]` int32 class ids, checked to lie in `[0, classes)`: a ValueError naming the first label
    outside and the class count when run eagerly, an assertion with the same message inside a traced step.

    Example:
        check_class_ids([0, 2, 1], 3, "arcface_loss")   # [0, 2, 1]
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    classes = tf.cast(classes, tf.int32)
    outside = tf.logical_or(labels < 0, labels >= classes)
    if tf.executing_eagerly():
        if bool(tf.reduce_any(outside)):
            bad = int(tf.boolean_mask(labels, outside)[0])
            raise ValueError(f"{caller}: every label must be a class id in [0, num_classes), the classes the class "
                             f"weights or proxies were made for. Received: label {bad} with num_classes="
                             f"{int(classes)}")
        return labels
    # XLA compiles the assertion away (it has no asserts); a traced step without XLA stops here.
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(outside)), [
        f"{caller}: every label must be a class id in [0, num_classes). Received: labels", labels,
        "num_classes", classes])
    with tf.control_dependencies([check]):
        return tf.identity(labels)
