"""`tf.data` pipelines: class-balanced P×K batches, views, balanced pairs, image batches, and every image in order.

The samplers draw item indices from the labels alone and are pure `tf.data` (no Python generator),
infinite, and deterministic for a seed: batch `s` depends only on `(seed, s)`, so `start_step` resumes
a run exactly where it stopped. Pixels come from the set's source, in memory (a gather) or streamed
from files (decoded in parallel, per batch, `reprlearn.data.decode`): the same indices give the same
images either way.

A file that fails to decode mid-run is skipped without stopping the run: each drawn item comes with
spare candidates of its class (or, for views and image batches, of the set), the first that decodes
fills the slot, so a P×K batch stays exactly P×K; the skipped paths are appended to `bad_image_log`.

Example:
    ds = pk_batches(images, labels, classes_per_batch=8, examples_per_class=16, seed=0)
    images_batch, labels_batch = next(iter(ds))   # [128, H, W, C] float32, [128] int32
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from reprlearn.data.augment import augment_batch, augment_image, check_augment
from reprlearn.data.recipes import RECIPES, augment_view, recipe_views
from reprlearn.data.decode import decode_contents
from reprlearn.data.imageset import ImageSet, take_rows
from reprlearn.errors import DataError

# Spare candidates per drawn item of a streamed set: how many files of a slot may fail before it repeats another.
SPARES = 4
# Consecutive items decoded as one group when a streamed set is read in order.
ORDER_GROUP = 16


def _pixels_of(images) -> ImageSet:
    """An ImageSet as is; an array as an in-memory set (labels unused)."""
    if isinstance(images, ImageSet):
        return images
    images = np.asarray(images)
    return ImageSet(images, np.zeros(len(images), np.int64), [])


def _decoded_rows(source: ImageSet, rows, take: int, seed: int, crop: bool, bad_image_log: str | None,
                  augment: tuple[str, bool] | None = None, row_offset: int = 0):
    """Images for a dataset of `(candidates [G, M] int64, step)`: per row, the first `take` candidates that decode.

    Yields `(images float32 [G·take, H, W, C], items used int64 [G·take], step)`. In memory nothing fails: the
    first `take` columns are gathered. Streamed, the rows of every step are decoded in parallel (one small
    dataset per row, whose failed files are dropped) and a slot whose candidates all fail repeats a decoded
    item of its row. `crop`: random crop windows keyed by (seed, step, row, candidate); `augment`: `(level, flips)`
    applied to each decoded file as it is decoded, keyed the same way (`augment_image`: a streamed batch is
    augmented file by file, in parallel, where a whole decoded batch would pass through memory again).
    `row_offset`: the first row's index in the global batch (a worker's share keys its draws as the whole would).
    """
    if source.decoded:
        gather_images = _gatherer(source.images)

        def gather(candidates, step):
            used = tf.reshape(candidates[:, :take], [-1])
            return gather_images(used), used, step

        return rows.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    paths, spec = tf.constant(source.files.paths()), source.spec
    blank = tf.zeros([*spec.image_size, spec.channels])

    def row_images(row, items, step):
        row_seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), step]), row)

        def decode(column, item):
            item_seed = tf.random.experimental.stateless_fold_in(row_seed, column)
            image = decode_contents(tf.io.read_file(tf.gather(paths, item)), spec, item_seed if crop else None)
            if augment:
                image = augment_image(image, tf.random.experimental.stateless_fold_in(item_seed, 1), *augment)
            return image, column

        columns = tf.range(tf.shape(items, out_type=tf.int64)[0])
        good = tf.data.Dataset.from_tensor_slices((columns, items)).map(decode).ignore_errors()
        return good.concatenate(tf.data.Dataset.from_tensors((blank, tf.constant(-1, tf.int64))).repeat(take)).take(
            take)

    def split_rows(candidates, step):
        count = tf.shape(candidates, out_type=tf.int64)[0]
        return tf.data.Dataset.from_tensor_slices((tf.range(count) + row_offset, candidates, tf.fill([count], step)))

    decoded = rows.flat_map(split_rows).interleave(
        row_images, cycle_length=8, block_length=take, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def fill(batch, decoded_batch):
        (candidates, step), (images, columns) = batch, decoded_batch
        count, width = tf.shape(candidates)[0], tf.shape(candidates)[1]
        images = tf.reshape(images, [count, take, *spec.image_size, spec.channels])
        columns = tf.reshape(columns, [count, take])
        ok = columns >= 0
        if bad_image_log:
            _log_failures(paths, candidates, columns, ok, width, take, bad_image_log)
        # Failed slots repeat the row's decoded images, cyclically (decoded ones first, in order); a batch where
        # every file decoded (nearly always) is not copied again.
        order = tf.argsort(tf.cast(~ok, tf.int32), axis=1, stable=True)
        decoded_count = tf.maximum(tf.reduce_sum(tf.cast(ok, tf.int32), axis=1, keepdims=True), 1)
        source_slot = tf.gather(order, tf.range(take)[None] % decoded_count, batch_dims=1)
        images = tf.cond(tf.reduce_all(ok), lambda: images, lambda: tf.gather(images, source_slot, batch_dims=1))
        columns = tf.maximum(tf.gather(columns, source_slot, batch_dims=1), 0)
        used = tf.gather(candidates, columns, batch_dims=1)
        return tf.reshape(images, [-1, *spec.image_size, spec.channels]), tf.reshape(used, [-1]), step

    return tf.data.Dataset.zip(rows, decoded.batch(_rows_per_step(rows) * take)).map(
        fill, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _gatherer(images):
    """`f(index) → float32 images`: a gather from a constant, or, for a memory-mapped cache, a read of just those
    rows from the file (a constant would load it whole)."""
    if not isinstance(images, np.memmap):
        images_t = tf.constant(images)
        return lambda index: tf.cast(tf.gather(images_t, index), tf.float32)
    shape = [None, *images.shape[1:]]

    def read(index):
        return take_rows(images, index).astype(np.float32)

    def gather(index):
        return tf.ensure_shape(tf.numpy_function(read, [index], tf.float32, stateful=False), shape)

    return gather


def _rows_per_step(rows) -> int:
    count = rows.element_spec[0].shape[0]
    if count is None:
        raise DataError("internal: candidate rows must have a static count per step")
    return int(count)


def _log_failures(paths, candidates, columns, ok, width, take, log_path: str) -> None:
    """Appends the paths of candidates tried and failed (those before each row's last decoded one, or the whole
    row when it came up short) to `log_path`."""
    decoded = tf.reduce_max(tf.one_hot(tf.where(ok, columns, -1), width, dtype=tf.int32), axis=1) > 0  # [G, M]
    columns_range = tf.range(width, dtype=columns.dtype)[None]
    full = tf.reduce_sum(tf.cast(ok, tf.int32), axis=1, keepdims=True) >= take
    last = tf.reduce_max(tf.where(ok, columns, -1), axis=1, keepdims=True)
    tried = tf.logical_or(~full, columns_range <= last)
    failed = tf.logical_and(tried, ~decoded)

    def write():
        tf.print(tf.strings.reduce_join(tf.gather(paths, tf.boolean_mask(candidates, failed)), separator="\n"),
                 output_stream=f"file://{log_path}")
        return tf.constant(0)

    tf.cond(tf.reduce_any(failed), write, lambda: tf.constant(0))


def batches_in_order(imageset: ImageSet, batch_size: int = 256):
    """Every image of a set in order, as `(images float32 [b, H, W, C], items int64 [b])` batches (a Python
    iterator of NumPy arrays).

    A streamed file that fails to decode is left out of its batch (its index is missing from `items`),
    so callers score what decoded and name what did not.
    """
    n = len(imageset)
    if imageset.decoded:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            yield np.asarray(imageset.images[start:stop], np.float32), np.arange(start, stop)
        return
    paths, spec = tf.constant(imageset.files.paths()), imageset.spec

    def group(first):
        items = tf.range(first, tf.minimum(first + ORDER_GROUP, n))
        return tf.data.Dataset.from_tensor_slices(items).map(
            lambda item: (decode_contents(tf.io.read_file(tf.gather(paths, item)), spec), item)).ignore_errors()

    dataset = tf.data.Dataset.range(0, n, ORDER_GROUP).interleave(
        group, cycle_length=8, block_length=ORDER_GROUP, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    for images, items in dataset.batch(batch_size).prefetch(2).as_numpy_iterator():
        yield images, items


def pairs_in_order(imageset: ImageSet, first, second, batch_size: int = 256):
    """The pairs `(first[i], second[i])` of a set's items in order, as `(images_a, images_b float32 [b, H, W, C],
    pairs int64 [b])` batches (a Python iterator of NumPy arrays): pixels of one batch of pairs at a time.

    A pair with a streamed file that fails to decode is left out of its batch (its index is missing from
    `pairs`), so callers score the pairs that decoded and name the files that did not.
    """
    first, second = np.asarray(first, np.int64).reshape(-1), np.asarray(second, np.int64).reshape(-1)
    if len(first) != len(second):
        raise DataError(f"first and second must pair up one to one. Received: {len(first)} and {len(second)} items")
    if imageset.decoded:
        for start in range(0, len(first), batch_size):
            stop = min(len(first), start + batch_size)
            yield imageset.pixels(first[start:stop]), imageset.pixels(second[start:stop]), np.arange(start, stop)
        return
    paths, spec = tf.constant(imageset.files.paths()), imageset.spec

    def decode(item_a, item_b, pair):
        return (decode_contents(tf.io.read_file(tf.gather(paths, item_a)), spec),
                decode_contents(tf.io.read_file(tf.gather(paths, item_b)), spec), pair)

    dataset = tf.data.Dataset.from_tensor_slices((first, second, np.arange(len(first), dtype=np.int64))).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    yield from dataset.batch(batch_size).prefetch(2).as_numpy_iterator()


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


def pk_candidates(labels, classes_per_batch: int, examples_per_class: int, seed: int, start_step: int = 0,
                  spares: int = 0):
    """A dataset of `(candidates [P, K + spares] int64, step)`: P distinct classes, K items of each, then `spares`
    more items of the same class (drawn with replacement) to stand in for any that fail to decode.

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
        if spares:
            spare_seed = tf.random.experimental.stateless_fold_in(step_seed, 11)
            position = tf.concat([position, _uniform_int([p, spares], n, spare_seed)], axis=1)
        return tf.gather(tf.gather(table_t, chosen), position, batch_dims=1), step

    return tf.data.Dataset.counter(start_step).map(make_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=True)


def pk_indices(labels, classes_per_batch: int, examples_per_class: int, seed: int, start_step: int = 0):
    """A dataset of index batches: P distinct classes, K indices of each, `[P*K]` int64 (see `pk_candidates`)."""
    k = int(examples_per_class)
    return pk_candidates(labels, classes_per_batch, examples_per_class, seed, start_step).map(
        lambda candidates, step: tf.reshape(candidates[:, :k], [-1]))


def _spares_for(source: ImageSet) -> int:
    return 0 if source.decoded else SPARES


def _crop_randomly(source: ImageSet, augment: str) -> bool:
    """Streamed `crop` sets take a random window for training when augmentation is on."""
    return not source.decoded and source.spec.resize == "crop" and augment != "none"


def pk_batches(images, labels, classes_per_batch: int, examples_per_class: int, seed: int = 0,
               start_step: int = 0, augment: str = "none", flips: bool = False,
               bad_image_log: str | None = None, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Infinite P×K batches `(images float32 [P*K, H, W, C], labels int32 [P*K])`; see `pk_candidates`.

    `images`: an array or an `ImageSet` (streamed sets decode each batch's files; `labels` index the same items).
    `augment` / `flips`: see `reprlearn.data.augment.augment_batch`; batch s is augmented with a seed drawn
    from (seed, s), so resuming reproduces it.
    `shard`: `(worker, workers)`: only this worker's rows of each global batch (its P / workers classes), and for
    a streamed set only their files are decoded. In memory the whole batch is gathered, then sliced (so the
    batch-wide augmentation draws stay those of one process).
    """
    check_augment(augment)
    source = _pixels_of(images)
    labels_t = tf.constant(np.asarray(labels), tf.int32)
    k = int(examples_per_class)
    candidates = pk_candidates(labels, classes_per_batch, examples_per_class, seed, start_step, _spares_for(source))
    per_file = not source.decoded and augment != "none"
    row_offset = 0
    if shard is not None and not source.decoded:
        worker, workers = shard
        row_offset = worker * (int(classes_per_batch) // workers)
        candidates = worker_rows(candidates, worker, workers)
    decoded = _decoded_rows(source, candidates, k, seed, _crop_randomly(source, augment), bad_image_log,
                            (augment, flips) if per_file else None, row_offset)

    def finish(batch, used, step):
        if augment != "none" and not per_file:
            step_seed = tf.stack([tf.constant(seed, tf.int64), step])
            batch = augment_batch(batch, tf.random.experimental.stateless_fold_in(step_seed, 1), augment, flips)
        return batch, tf.gather(labels_t, used)

    batches = decoded.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shard is not None and source.decoded:
        batches = worker_rows(batches, *shard)
    return batches.prefetch(tf.data.AUTOTUNE)


def worker_rows(dataset: tf.data.Dataset, worker: int, workers: int) -> tf.data.Dataset:
    """Each global batch's rows `[w·B/W, (w+1)·B/W)` for worker w of W (every tensor of the element but scalars,
    such as a step number, which every worker keeps)."""
    def rows(*batch):
        def own(tensor):
            if tensor.shape.rank == 0:
                return tensor
            # A static batch size slices to a static size (the decoding pipelines need their rows per step).
            per_worker = (tensor.shape[0] if tensor.shape[0] is not None else tf.shape(tensor)[0]) // workers
            return tensor[worker * per_worker:(worker + 1) * per_worker]
        return tf.nest.map_structure(own, batch)

    return dataset.map(rows)


def _distinct_rows(draw_seed, step_seed, count: int, size: int, spares: int):
    """`[size, 1 + spares]` int64: `size` distinct items of `count` drawn with `draw_seed`, each followed by `spares`
    other items of the set (stand-ins for an image that fails to decode), drawn from `step_seed`."""
    rows = tf.cast(tf.argsort(tf.random.stateless_uniform([count], draw_seed))[:size], tf.int64)[:, None]
    if spares:
        rows = tf.concat([rows, _uniform_int([size, spares], count, tf.random.experimental.stateless_fold_in(
            step_seed, 11))], axis=1)
    return rows


def view_batches(images, images_per_batch: int, views_per_image: int, seed: int = 0, start_step: int = 0,
                 augment: str = "light", flips: bool = False, bad_image_log: str | None = None) -> tf.data.Dataset:
    """Infinite batches of K augmented views of each of P distinct images, labelled by image: `(images float32
    [P*K, H, W, C], labels int32 [P*K])`, each label the image's index in `images`, K times (positives are views
    of one image; replicas that draw the same image agree on its label). `images`: an array or an `ImageSet`.

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
    source = _pixels_of(images)
    spares = _spares_for(source)

    def draw(step):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        draw_seed = tf.random.experimental.stateless_split(step_seed, 2)[0]
        return _distinct_rows(draw_seed, step_seed, count, p, spares), step

    def views(pictures, used, step):
        augment_seed = tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), step]), 2)[1]
        return (augment_batch(tf.repeat(pictures, k, axis=0), augment_seed, augment, flips),
                tf.cast(tf.repeat(used, k), tf.int32))

    rows = tf.data.Dataset.counter(start_step).map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _decoded_rows(source, rows, 1, seed, False, bad_image_log).map(
        views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def two_view_batches(images, batch_size: int, seed: int = 0, start_step: int = 0, recipe: str = "simclr",
                     flips: bool = False, options: dict | None = None, bad_image_log: str | None = None,
                     shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Infinite batches of two augmented views of B distinct images, `(views_1, views_2)` float32 `[B, H, W, C]`
    each, for label-free learning: row i of both is image i of the batch (its labels, if any, are not read).

    View v of batch s is drawn with `recipe`'s view v (`reprlearn.data.recipes`; `options` set its ops one by
    one) from a seed keyed by (seed, s, v), so a resumed run sees exactly the batches it would have.
    `images`: an array or an `ImageSet` (a streamed file that fails to decode is replaced by another image).
    `shard`: `(worker, workers)`: only this worker's rows of each global batch, the only ones it decodes.

    Raises:
        DataError: an unknown recipe, or more images per batch than `images` holds.
    """
    if recipe not in RECIPES:
        raise DataError(f"two views are drawn with a recipe, one of {list(RECIPES)}. Received: augment={recipe!r}")
    source = _pixels_of(images)
    count, spares = len(source), _spares_for(source)
    if not 1 <= batch_size <= count:
        raise DataError(f"a batch of two views takes batch_size distinct images, in [1, {count}] (the images given). "
                        f"Received: batch_size={batch_size}")
    view_recipes = recipe_views(recipe, source.image_shape, options)

    def draw(step):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        return _distinct_rows(step_seed, step_seed, count, batch_size, spares), step

    def views(pictures, used, step):
        step_seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), step]), 2)
        return tuple(augment_view(pictures, tf.random.experimental.stateless_fold_in(step_seed, view), view_recipe,
                                  flips) for view, view_recipe in enumerate(view_recipes))

    rows = tf.data.Dataset.counter(start_step).map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shard is not None:
        rows = worker_rows(rows, *shard)
    return _decoded_rows(source, rows, 1, seed, False, bad_image_log).map(
        views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


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


def _with_spares(index, labels_t_table, step_seed, spares: int):
    """`[B]` items → `[B, 1 + spares]`: each followed by `spares` items of its own class, drawn with replacement."""
    if not spares:
        return index[:, None]
    class_of, counts, table = labels_t_table
    cls = tf.gather(class_of, index)
    position = _uniform_int([tf.shape(index)[0], spares], tf.gather(counts, cls)[:, None], step_seed)
    return tf.concat([index[:, None], tf.gather(tf.gather(table, cls), position, batch_dims=1)], axis=1)


def _class_lookup(labels):
    """`(class of each item, items per class, the class table)` as constants, for drawing stand-in items."""
    classes, counts, table = _class_table(np.asarray(labels))
    return (tf.constant(np.searchsorted(classes, np.asarray(labels)), tf.int64), tf.constant(counts, tf.int64),
            tf.constant(table))


def pair_batches(images, labels, batch_size: int, seed: int = 0, start_step: int = 0,
                 bad_image_log: str | None = None, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Infinite balanced pair batches `((first, second) float32 images, match float32 [B])`; 1 = same class.

    `images`: an array or an `ImageSet`; a streamed file that fails to decode is replaced by another of its class.
    `shard`: `(worker, workers)`: only this worker's pairs of each global batch, the only ones it reads or decodes.
    """
    source = _pixels_of(images)
    spares, lookup = _spares_for(source), _class_lookup(labels)
    pairs = pair_indices(labels, batch_size, seed, start_step)
    if shard is not None:
        pairs = worker_rows(pairs, *shard)
    index = tf.data.Dataset.zip(pairs, tf.data.Dataset.counter(start_step))

    def rows(batch, step):
        # Both images of every pair in one set of rows (first images, then second), so one pipeline decodes them.
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        return tf.concat([_with_spares(batch[part], lookup, tf.random.experimental.stateless_fold_in(
            step_seed, 20 + part), spares) for part in (0, 1)], axis=0), step

    def join(batch, decoded):
        first, second = tf.split(decoded[0], 2)
        return (first, second), batch[0][2]

    return tf.data.Dataset.zip(index, _decoded_rows(source, index.map(rows), 1, seed, False, bad_image_log)).map(
        join, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def image_batches(images, batch_size: int, seed: int = 0, start_step: int = 0, targets: bool = True,
                  bad_image_log: str | None = None, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Infinite batches of uniformly drawn images (with replacement), keyed by step, for label-free training.

    Yields `(images float32, images / 255)` when `targets` (autoencoders), else `images` (a VAE's own loss).
    `images`: an array or an `ImageSet` (a file that fails to decode is replaced by another drawn image).
    `shard`: `(worker, workers)`: only this worker's rows of each global batch, the only ones it reads or decodes.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    source = _pixels_of(images)
    count, spares = len(source), _spares_for(source)

    def draw(step):
        step_seed = tf.stack([tf.constant(seed, tf.int64), step])
        rows = _uniform_int([batch_size], count, step_seed)[:, None]
        if spares:
            rows = tf.concat([rows, _uniform_int([batch_size, spares], count,
                                                 tf.random.experimental.stateless_fold_in(step_seed, 11))], axis=1)
        return rows, step

    def finish(batch, used, step):
        return (batch, batch / 255.0) if targets else batch

    rows = tf.data.Dataset.counter(start_step).map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shard is not None:
        rows = worker_rows(rows, *shard)
    return _decoded_rows(source, rows, 1, seed, False, bad_image_log).map(
        finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def matched_pair_batches(queries: ImageSet, references: ImageSet, batch_size: int, seed: int = 0,
                         start_step: int = 0, bad_image_log: str | None = None,
                         shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Infinite batches of B matched pairs of two views, `((query images, reference images), place ids [B])`.

    Row i of `queries` and of `references` is pair i, and their labels are the pairs' places. Each batch holds
    B distinct places and one pair of each (drawn at random among the place's pairs), so every other reference of
    the batch is a true negative of a query. Each view decodes at its own size; a file that fails to decode
    mid-run gives a blank image in its slot and is listed in `bad_image_log`. `shard`: `(worker, workers)`, that
    worker's pairs of each global batch only.

    Raises:
        DataError: fewer places than `batch_size`.
    """
    places = len(np.unique(queries.labels))
    if batch_size > places:
        raise DataError(f"a batch of matched pairs takes {batch_size} distinct places and the training pairs hold "
                        f"{places}: lower train.pair_batch_size. Received: train.pair_batch_size={batch_size}")
    rows = pk_candidates(queries.labels, batch_size, 1, seed, start_step)
    if shard is not None:
        rows = worker_rows(rows, *shard)
    labels = tf.constant(queries.labels, tf.int64)
    decoded = [_decoded_rows(view, rows, 1, seed, False, bad_image_log) for view in (queries, references)]

    def join(query, reference):
        return (query[0], reference[0]), tf.gather(labels, query[1])

    return tf.data.Dataset.zip(*decoded).map(join, num_parallel_calls=tf.data.AUTOTUNE,
                                             deterministic=True).prefetch(tf.data.AUTOTUNE)
