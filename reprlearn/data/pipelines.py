"""`tf.data` pipelines for training: class-balanced P×K batches and balanced pairs.

Both are pure `tf.data` (no Python generator), infinite, and deterministic for a seed:
batch `s` depends only on `(seed, s)`, so `start_step` resumes a run exactly where it
stopped and the pipelines shard under `tf.distribute`.

Example:
    ds = pk_batches(images, labels, classes_per_batch=8, examples_per_class=16, seed=0)
    images_batch, labels_batch = next(iter(ds))   # [128, H, W, C] float32, [128] int32
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reprlearn.data.augment import augment_batch, check_augment
from reprlearn.errors import DataError


def _class_table(labels: np.ndarray):
    """Returns (class ids [C], counts [C], table [C, max_n]) with each class's indices, padded."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    table = np.zeros((len(classes), counts.max()), dtype=np.int64)
    fill = np.zeros(len(classes), dtype=np.int64)
    for i, c in enumerate(inverse):
        table[c, fill[c]] = i
        fill[c] += 1
    return classes, counts, table


def _uniform_int(shape, high, seed) -> tf.Tensor:
    """Stateless uniform integers in [0, high) (high may be a per-element tensor)."""
    high = tf.cast(high, tf.int64)
    return tf.minimum(tf.cast(tf.random.stateless_uniform(shape, seed) * tf.cast(high, tf.float32), tf.int64),
                      high - 1)


def pk_indices(labels, classes_per_batch: int, examples_per_class: int, seed: int, start_step: int = 0):
    """A dataset of index batches: P distinct classes, K indices of each, `[P*K]` int64.

    A class with at least K examples gives K distinct examples. A class with fewer than K
    examples is sampled **with replacement**, so its examples repeat within the batch
    (a one-example class then yields identical positives, distance 0).

    Raises:
        ValueError: more classes per batch than the data has, or K < 1.
    """
    labels = np.asarray(labels)
    classes, counts, table = _class_table(labels)
    num_classes, max_n = table.shape
    p, k = int(classes_per_batch), int(examples_per_class)
    if p > num_classes or p < 1:
        raise DataError(f"classes_per_batch must be in [1, {num_classes}] (the classes in the training data). "
                         f"Received: classes_per_batch={classes_per_batch}")
    if k < 1:
        raise DataError(f"examples_per_class must be >= 1. Received: examples_per_class={examples_per_class}")
    counts_t = tf.constant(counts, tf.int64)
    table_t = tf.constant(table)

    def make_batch(step):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        class_seed, order_seed, draw_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, 3))
        chosen = tf.argsort(tf.random.stateless_uniform([num_classes], class_seed))[:p]
        n = tf.gather(counts_t, chosen)[:, None]                                  # [P, 1]
        # Without replacement: random keys, padding pushed last, take the first K.
        keys = tf.random.stateless_uniform([p, max_n], order_seed)
        keys = tf.where(tf.range(max_n, dtype=tf.int64)[None] < n, keys, 2.0)
        distinct = tf.argsort(keys, axis=1)[:, :k]
        if max_n < k:  # every class is small; pad so both branches have K columns
            distinct = tf.pad(distinct, [[0, 0], [0, k - max_n]])
        # With replacement, for classes smaller than K.
        drawn = _uniform_int([p, k], n, draw_seed)
        position = tf.where(n >= k, tf.cast(distinct, tf.int64), drawn)
        rows = tf.gather(table_t, chosen)
        return tf.reshape(tf.gather(rows, position, batch_dims=1), [p * k])

    return tf.data.Dataset.counter(start_step).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=True)


def pk_batches(images, labels, classes_per_batch: int, examples_per_class: int, seed: int = 0,
               start_step: int = 0, augment: str = "none", flips: bool = False) -> tf.data.Dataset:
    """Infinite P×K batches `(images float32 [P*K, H, W, C], labels int32 [P*K])`; see `pk_indices`.

    `augment` / `flips`: see `reprlearn.data.augment.augment_batch`; batch s is augmented with a seed drawn
    from (seed, s), so resuming reproduces it.
    """
    check_augment(augment)
    images_t = tf.constant(np.asarray(images))
    labels_t = tf.constant(np.asarray(labels), tf.int32)
    index = pk_indices(labels, classes_per_batch, examples_per_class, seed, start_step)

    def load(i, step):
        batch = tf.cast(tf.gather(images_t, i), tf.float32)
        if augment != "none":
            step_seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), step]), 1)
            batch = augment_batch(batch, step_seed, augment, flips)
        return batch, tf.gather(labels_t, i)

    return tf.data.Dataset.zip(index, tf.data.Dataset.counter(start_step)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def view_batches(images, images_per_batch: int, views_per_image: int, seed: int = 0, start_step: int = 0,
                 augment: str = "light", flips: bool = False) -> tf.data.Dataset:
    """Infinite batches of K augmented views of each of P distinct images, labelled by image: `(images float32
    [P*K, H, W, C], labels int32 [P*K])`, each label the image's index in `images`, K times (positives are views
    of one image; replicas that draw the same image agree on its label).

    Each view is augmented independently (`reprlearn.data.augment.augment_batch`), batch s with a seed drawn
    from (seed, s), so resuming reproduces it. The images' own labels are not used.

    Raises:
        ValueError: `augment` is "none" (every view would be the same image), more images per batch than
            `images` holds, or fewer than 2 views.
    """
    if check_augment(augment) == "none":
        raise DataError("views of one image differ only by augmentation; augment must be light or strong. "
                         "Received: augment='none'")
    count, p, k = len(images), int(images_per_batch), int(views_per_image)
    if not 1 <= p <= count:
        raise DataError(f"images_per_batch must be in [1, {count}] (the images given). "
                         f"Received: images_per_batch={images_per_batch}")
    if k < 2:
        raise DataError(f"views_per_image must be >= 2 so every batch has positive pairs. "
                         f"Received: views_per_image={views_per_image}")
    images_t = tf.constant(np.asarray(images))

    def load(step):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        draw_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, 2))
        chosen = tf.argsort(tf.random.stateless_uniform([count], draw_seed))[:p]  # distinct images
        index = tf.repeat(chosen, k)
        batch = tf.cast(tf.gather(images_t, index), tf.float32)
        return augment_batch(batch, augment_seed, augment, flips), tf.cast(index, tf.int32)

    return tf.data.Dataset.counter(start_step).map(load, num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=True).prefetch(tf.data.AUTOTUNE)


def pair_indices(labels, batch_size: int, seed: int, start_step: int = 0) -> tf.data.Dataset:
    """A dataset of `(first [B], second [B], match [B] float32)` index batches, half matching.

    Matching pairs take a uniform anchor and another example of its class (the anchor
    itself only when its class has one example). Non-matching pairs take a uniform
    anchor and a uniform example of a uniformly chosen other class.

    Raises:
        ValueError: fewer than two classes, or batch_size < 2.
    """
    labels = np.asarray(labels)
    classes, counts, table = _class_table(labels)
    num_classes = len(classes)
    if num_classes < 2:
        raise DataError(f"pairs need at least two classes. Received: {num_classes} class")
    if batch_size < 2:
        raise DataError(f"batch_size must be >= 2. Received: batch_size={batch_size}")
    n_pos = batch_size // 2
    n_neg = batch_size - n_pos
    class_of = np.searchsorted(classes, labels)
    position_in_class = np.zeros(len(labels), dtype=np.int64)
    for c in range(num_classes):
        position_in_class[table[c, :counts[c]]] = np.arange(counts[c])
    counts_t, table_t = tf.constant(counts, tf.int64), tf.constant(table)
    class_of_t, position_t = tf.constant(class_of, tf.int64), tf.constant(position_in_class)
    num_items = len(labels)

    def make_batch(step):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        s = tf.unstack(tf.random.experimental.stateless_split(step_seed, 5))
        anchor = _uniform_int([batch_size], num_items, s[0])
        cls = tf.gather(class_of_t, anchor)
        n = tf.gather(counts_t, cls)
        # Positive: shift the anchor's position by 1..n-1 within its class (0 if n == 1).
        shift = 1 + _uniform_int([batch_size], tf.maximum(n - 1, 1), s[1])
        shift = tf.where(n > 1, shift, 0)
        pos_position = (tf.gather(position_t, anchor) + shift) % n
        positive = tf.gather_nd(table_t, tf.stack([cls, pos_position], axis=1))
        # Negative: another class (offset 1..C-1), then a uniform member of it.
        other = (cls + 1 + _uniform_int([batch_size], num_classes - 1, s[2])) % num_classes
        neg_position = _uniform_int([batch_size], tf.gather(counts_t, other), s[3])
        negative = tf.gather_nd(table_t, tf.stack([other, neg_position], axis=1))
        second = tf.concat([positive[:n_pos], negative[n_pos:]], axis=0)
        match = tf.concat([tf.ones([n_pos]), tf.zeros([n_neg])], axis=0)
        order = tf.argsort(tf.random.stateless_uniform([batch_size], s[4]))
        return tf.gather(anchor, order), tf.gather(second, order), tf.gather(match, order)

    return tf.data.Dataset.counter(start_step).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=True)


def pair_batches(images, labels, batch_size: int, seed: int = 0, start_step: int = 0) -> tf.data.Dataset:
    """Infinite balanced pair batches `((first, second) float32 images, match float32 [B])`; 1 = same class."""
    images_t = tf.constant(np.asarray(images))
    index = pair_indices(labels, batch_size, seed, start_step)

    def gather(first, second, match):
        return ((tf.cast(tf.gather(images_t, first), tf.float32),
                 tf.cast(tf.gather(images_t, second), tf.float32)), match)

    return index.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def image_batches(images, batch_size: int, seed: int = 0, start_step: int = 0, targets: bool = True) -> tf.data.Dataset:
    """Infinite batches of uniformly drawn images (with replacement), keyed by step, for label-free training.

    Yields `(images float32, images / 255)` when `targets` (autoencoders), else `images` (a VAE's own loss).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    images_t = tf.constant(np.asarray(images))

    def make_batch(step):
        batch = tf.cast(tf.gather(images_t, _uniform_int([batch_size], len(images), tf.stack([seed, step]))),
                        tf.float32)
        return (batch, batch / 255.0) if targets else batch

    return tf.data.Dataset.counter(start_step).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=True).prefetch(tf.data.AUTOTUNE)
