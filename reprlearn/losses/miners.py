"""Online triplet miners: given a batch's distances and labels, which triplets count.

A miner returns fixed-shape tensors, never ragged index lists, so it runs under
`tf.function`, XLA, `tf.distribute` and export:

- `pair_mask` `[N, N]` bool: the anchor-positive pairs (a, p) the loss uses;
- `negative_index` `[N, N]` int32: the one negative mined for each (a, p) (`[N, 1]` when it
  depends on the anchor only), or `None` when every negative of the anchor counts (batch-all).

Example:
    d = pairwise_distance(embeddings, "L2")
    mined = SemiHardMiner()(d, labels)
    d_an = tf.gather(d, mined.negative_index, batch_dims=1)

Every miner needs only O(N²) memory.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from reprlearn.losses.pair_miners import resolve_miner
from reprlearn.ops.labels import by_positive_count, pair_masks, positive_slots


class MinedTriplets(NamedTuple):
    """A miner's selection: anchor-positive pairs and, per pair, its negative (`None`: all negatives)."""
    pair_mask: tf.Tensor
    negative_index: Optional[tf.Tensor]


class Miner:
    """Base class: `miner(distances, labels) -> MinedTriplets`. Subclasses are Keras-serializable."""

    picks_one_negative = True  # False: every negative of the anchor counts (`negative_index` is None)

    def __call__(self, distances, labels) -> MinedTriplets:
        distances = tf.convert_to_tensor(distances)
        positive, negative = pair_masks(labels)
        return self.mine(distances, positive, negative)

    def mine(self, distances: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> MinedTriplets:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Miner":
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"{type(self).__name__}()"


def _has_any(mask: tf.Tensor) -> tf.Tensor:
    """`[N, 1]` bool: the row has at least one True."""
    return tf.reduce_any(mask, axis=1, keepdims=True)


# Sort-free semi-hard mining holds one [anchors, width, N] block per chunk of anchors: about how many
# block elements a chunk may hold.
_CHUNK_ELEMENTS = 1 << 20
SEMIHARD_PATHS = ("auto", "sort", "sort-free")


def _sort_keys(distances, negative):
    """int64 keys in the order of `distances`, with negatives before other columns at an equal distance.

    A float's bits read as a sign-magnitude integer; flipping the magnitude bits of negative values makes
    integer order float order (-0.0 is made +0.0 first, as the two compare equal).
    """
    bits = tf.bitcast(tf.where(tf.equal(distances, 0.0), tf.zeros_like(distances), distances), tf.int32)
    ordered = tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, np.int32(0x7FFFFFFF)), bits)
    return tf.cast(ordered, tf.int64) * 2 + tf.cast(tf.logical_not(negative), tf.int64)


def _reverse_cumulative_min(x, fill: int):
    """`[R, C]`: `min(x[:, j:])` for each j, in log2(C) shift-and-min passes (TensorFlow has no cumulative min)."""
    def pass_(x, shift):
        return tf.minimum(x, tf.concat([x[:, shift:], tf.fill([tf.shape(x)[0], shift], fill)], 1))

    columns = x.shape[1]
    if columns is not None:  # static width (always so under XLA): unrolled passes
        shift = 1
        while shift < columns:
            x, shift = pass_(x, shift), shift * 2
        return x
    return tf.while_loop(lambda s, x: s < tf.shape(x)[1], lambda s, x: (s * 2, pass_(x, s)), [tf.constant(1), x])[1]


def _farthest_negative(distances, negative):
    """`[N]` int32: each anchor's farthest negative (column 0 when it has none)."""
    return tf.argmax(tf.where(negative, distances, -np.inf), axis=1, output_type=tf.int32)


def _map_row_chunks(fn, tensors, chunk: int, output_dtypes, output_widths):
    """`fn` over chunks of `chunk` rows of `[N, ...]` tensors (the last chunk zero-padded), results stacked
    back to `[N, width]` each: memory O(chunk · N) for what `fn` makes. One chunk: `fn` is called directly."""
    n = tf.shape(tensors[0])[0]
    static_n = tensors[0].shape[0]
    if static_n is not None and static_n <= chunk:
        return fn(*tensors)
    chunks = (n + chunk - 1) // chunk
    padding = chunks * chunk - n

    def in_chunks(x):
        padded = tf.pad(x, [[0, padding]] + [[0, 0]] * (len(x.shape) - 1))
        return tf.reshape(padded, tf.concat([[chunks, chunk], tf.shape(x)[1:]], 0))

    signature = tuple(tf.TensorSpec([chunk, width], dtype) for dtype, width in zip(output_dtypes, output_widths))
    outputs = tf.map_fn(lambda args: fn(*args), tuple(in_chunks(t) for t in tensors), fn_output_signature=signature)
    return tuple(tf.reshape(out, [chunks * chunk, -1])[:n] for out in outputs)


def _sorted_semihard_rows(distances, negative):
    """`[R, N]` semi-hard negative per (a, p) for R anchors' rows, from one sort of each row: no search.

    With a row sorted ascending (negatives first among equal distances), the closest negative
    farther than a positive is the first negative after it: a reverse cumulative minimum of the
    negatives' positions. Pairs with none take the farthest negative.
    """
    n = tf.shape(distances)[1]
    negated_keys, order = tf.math.top_k(-_sort_keys(distances, negative), k=n)
    negative_in_order = tf.equal(tf.bitwise.bitwise_and(negated_keys, 1), 0)  # a key's low bit: not a negative
    position = tf.range(n)[None, :]
    next_negative = _reverse_cumulative_min(tf.where(negative_in_order, position, n), fill=n)
    chosen = tf.gather(order, tf.minimum(next_negative, n - 1), batch_dims=1)
    chosen = tf.where(next_negative < n, chosen, _farthest_negative(distances, negative)[:, None])
    # Back from sorted positions to columns: row a's position j holds column order[a, j].
    flat_order = tf.reshape(order + tf.range(tf.shape(order)[0])[:, None] * n, [-1])
    return (tf.reshape(tf.gather(tf.reshape(chosen, [-1]), tf.math.invert_permutation(flat_order)),
                       tf.shape(order)),)


# The sort path works on chunks of anchors' rows of about this many elements (its int64 keys and
# their sorted copy dominate its memory): one chunk up to N = 2,048.
_SORT_CHUNK_ELEMENTS = 1 << 22


def _sorted_semihard_negatives(distances, negative):
    """`[N, N]` semi-hard negative per (a, p), sorting chunks of rows (see `_sorted_semihard_rows`)."""
    static_n = distances.shape[1]
    chunk = max(1, _SORT_CHUNK_ELEMENTS // static_n) if static_n else 256
    return _map_row_chunks(_sorted_semihard_rows, (distances, negative), chunk, (tf.int32,), (static_n,))[0]


def _nearest_farther_negatives(rows, thresholds):
    """Per (anchor, slot): the column of the smallest entry of `rows` [c, N] above `thresholds` [c, W], and
    whether there is one. Non-negatives are +inf in `rows`: they pass the comparison but never win."""
    candidates = tf.where(rows[:, None, :] > thresholds[:, :, None], rows[:, None, :], np.inf)  # [c, W, N]
    nearest = tf.argmin(candidates, axis=2, output_type=tf.int32)
    picked = tf.gather(rows, nearest, batch_dims=1)  # all-inf rows (nothing farther) give argmin 0
    return nearest, tf.logical_and(picked > thresholds, tf.math.is_finite(picked))


def _semihard_slots(distances, positive, negative, width: int):
    """Semi-hard negatives for each anchor's positives in `width` slots, by a masked minimum: no sort.

    Valid when no anchor has more than `width` positives. For a chunk of anchors, a
    `[chunk, width, N]` block keeps the negatives farther than each positive and takes their minimum;
    pairs with none fall back to the anchor's farthest negative. Memory O(N² + chunk·width·N).

    Returns:
        `(positive columns, filled, negative columns)`, each `[N, width]`.
    """
    slot_column, filled = positive_slots(positive, width)                          # [N, W]
    d_ap = tf.gather(distances, slot_column, batch_dims=1)                          # [N, W]
    d_negative = tf.where(negative, distances, np.inf)                              # [N, N]
    static_n = distances.shape[0]
    chunk = max(1, min(256, _CHUNK_ELEMENTS // (width * static_n))) if static_n else 64
    nearest_farther, has_farther = _map_row_chunks(_nearest_farther_negatives, (d_negative, d_ap), chunk,
                                                   (tf.int32, tf.bool), (width, width))
    return slot_column, filled, tf.where(has_farther, nearest_farther, _farthest_negative(distances, negative)[:, None])


def _anchor_without_negative(negative_index, has_negative):
    """D_aa = 0: the anchor itself stands in for a missing negative, as addons' masked maximum does."""
    anchor = tf.broadcast_to(tf.range(tf.shape(negative_index)[0])[:, None], tf.shape(negative_index))
    return tf.where(has_negative, negative_index, anchor)


def _slots_to_dense(slot_column, filled, values):
    """`[N, N]` with `values[a, w]` at `(a, slot_column[a, w])` for filled slots, 0 elsewhere."""
    n = tf.shape(slot_column)[0]
    # Empty slots write to an extra column that is cut off after.
    target_column = tf.where(filled, slot_column, n)
    anchor = tf.broadcast_to(tf.range(n)[:, None], tf.shape(target_column))
    index = tf.stack([tf.reshape(anchor, [-1]), tf.reshape(target_column, [-1])], axis=1)
    return tf.scatter_nd(index, tf.reshape(values, [-1]), tf.stack([n, n + 1]))[:, :n]


@keras.saving.register_keras_serializable(package="reprlearn")
class SemiHardMiner(Miner):
    """FaceNet semi-hard negatives with tensorflow-addons' fallback.

    For each positive pair (a, p): the closest negative farther than p, `min {D_an : D_an > D_ap}`;
    when no negative is farther, the farthest negative. Two exact paths, chosen inside the graph
    from M, the largest number of positives any anchor has in the batch:

    - sort-free (M ≤ 32, e.g. P×K batches with K ≤ 33): a masked minimum over a
      `[chunk, M', N]` block (M' = 16 or 32), O(N²·M') time, O(N² + chunk·M'·N) memory;
    - sort (larger M): each anchor's row sorted once, the first negative after each positive
      found by a reverse cumulative minimum, O(N² log N) time, O(N²) memory.

    Args:
        addons_edge_cases: what an anchor without any negative (a one-class batch) does. False: it mines
            nothing. True (tensorflow-addons): its pairs stay in the loss with a negative distance of 0
            (the anchor itself is taken as the negative), so each costs `margin + D_ap`.
        path: `"auto"` (above), or `"sort"` / `"sort-free"` to force one (tests; `"sort-free"` needs
            M ≤ 32).
    """

    def __init__(self, addons_edge_cases: bool = False, path: str = "auto"):
        if path not in SEMIHARD_PATHS:
            raise ValueError(f"path must be one of {list(SEMIHARD_PATHS)}. Received: path={path!r}")
        self.addons_edge_cases = bool(addons_edge_cases)
        self.path = path

    def choose_path(self, positive, on_slots, by_sorting):
        """`on_slots(width)()` (the sort-free path on 16 or 32 slots) or `by_sorting()`, as `path` and the batch's
        positive counts say; chosen inside the graph."""
        if self.path == "sort":
            return by_sorting()
        return by_positive_count(positive, on_slots, by_sorting, slots_only=self.path == "sort-free")

    def mine_slots(self, distances, positive, negative, width: int):
        """The sort-free path in slot form: `(positive columns, pair mask, negative columns)`, each `[N, width]`.

        Valid when no anchor has more than `width` positives (see `choose_path`); a loss can then work
        on N × width pairs instead of N².
        """
        distances = tf.stop_gradient(distances)  # mining picks indices; gradients flow through the loss's gather
        columns, filled, chosen = _semihard_slots(distances, positive, negative, width)
        has_negative = _has_any(negative)
        if self.addons_edge_cases:
            return columns, filled, _anchor_without_negative(chosen, has_negative)
        return columns, tf.logical_and(filled, has_negative), chosen

    def mine(self, distances, positive, negative):
        distances = tf.stop_gradient(distances)
        has_negative = _has_any(negative)

        def sort_free(width):
            def dense():
                columns, filled, chosen = _semihard_slots(distances, positive, negative, width)
                return _slots_to_dense(columns, filled, chosen)
            return dense

        def by_sorting():
            return _sorted_semihard_negatives(distances, negative)

        negative_index = self.choose_path(positive, sort_free, by_sorting)
        if self.addons_edge_cases:
            return MinedTriplets(positive, _anchor_without_negative(negative_index, has_negative))
        return MinedTriplets(tf.logical_and(positive, has_negative), negative_index)

    def get_config(self) -> dict:
        return {"addons_edge_cases": self.addons_edge_cases, "path": self.path}

    def __repr__(self):
        return f"SemiHardMiner(addons_edge_cases={self.addons_edge_cases}, path={self.path!r})"


@keras.saving.register_keras_serializable(package="reprlearn")
class BatchHardMiner(Miner):
    """Hermans et al. batch-hard: per anchor, its farthest positive and its closest negative.

    Args:
        addons_edge_cases: False: anchors without a positive or without a negative mine nothing.
            True (tensorflow-addons' `triplet_hard_loss`): every anchor counts once; a missing positive
            has distance 0 (the anchor itself) and a missing negative is the farthest item of the row.
    """

    def __init__(self, addons_edge_cases: bool = False):
        self.addons_edge_cases = bool(addons_edge_cases)

    def mine(self, distances, positive, negative):
        n = tf.shape(distances)[0]
        hardest_positive = tf.argmax(tf.where(positive, distances, -1.0), axis=1, output_type=tf.int32)
        hardest_negative = tf.argmin(tf.where(negative, distances, np.inf), axis=1, output_type=tf.int32)
        if self.addons_edge_cases:
            hardest_positive = tf.where(_has_any(positive)[:, 0], hardest_positive, tf.range(n))
            farthest = tf.argmax(distances, axis=1, output_type=tf.int32)
            hardest_negative = tf.where(_has_any(negative)[:, 0], hardest_negative, farthest)
            return MinedTriplets(tf.equal(tf.range(n)[None, :], hardest_positive[:, None]), hardest_negative[:, None])
        is_hardest = tf.equal(tf.range(n)[None, :], hardest_positive[:, None])
        valid = tf.logical_and(_has_any(positive), _has_any(negative))
        pair_mask = tf.logical_and(is_hardest, valid)
        return MinedTriplets(pair_mask, hardest_negative[:, None])

    def get_config(self) -> dict:
        return {"addons_edge_cases": self.addons_edge_cases}

    def __repr__(self):
        return f"BatchHardMiner(addons_edge_cases={self.addons_edge_cases})"


@keras.saving.register_keras_serializable(package="reprlearn")
class BatchAllMiner(Miner):
    """Batch-all: every (anchor, positive, negative) triplet of the batch; anchors without a negative mine nothing."""

    picks_one_negative = False

    def mine(self, distances, positive, negative):
        return MinedTriplets(tf.logical_and(positive, _has_any(negative)), None)


MINERS = {"semi-hard": SemiHardMiner, "batch-hard": BatchHardMiner, "batch-all": BatchAllMiner}


def get_miner(identifier) -> Miner:
    """A miner from a name in `MINERS`, a serialized config, or a `Miner` (returned as is)."""
    return resolve_miner(identifier, Miner, MINERS, "miner", "a Miner")
