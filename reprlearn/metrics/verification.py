"""Verification metrics on pairs: ROC AUC, EER, TAR@FAR, and accuracy at a threshold calibrated elsewhere.

A pair is predicted to match when its distance is <= the threshold. Every curve point is
a distinct threshold over the sorted distances (tied distances move together); the curve is
scikit-learn's (`roc_curve` on negated distances), tested against a NumPy loop.

Calibrate on validation pairs from the training side, score on test pairs: the test split
never picks the threshold.

Example:
    threshold, _ = best_threshold(val_distances, val_match)
    m = verification_metrics(test_distances, test_match, threshold)
    m["roc_auc"], m["eer"], m["tar_at_far_1e-3"], m["accuracy"]
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as sk_metrics

from reprlearn.errors import DataError


def _check_pairs(distances, match):
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    match = np.asarray(match).reshape(-1)
    if not np.isin(match, (0, 1)).all():
        raise DataError("match must mark each pair 1 / True (same class) or 0 / False, not class ids. Received: "
                        f"match values {sorted(set(np.unique(match).tolist()))[:6]}")
    match = match.astype(bool)
    if distances.shape != match.shape:
        raise DataError(f"distances and match must have one entry per pair. Received: "
                         f"distances.shape={distances.shape}, match.shape={match.shape}")
    if not np.all(np.isfinite(distances)):
        raise DataError("distances contain NaN or inf")
    if match.all() or not match.any():
        raise DataError("verification needs both matching and non-matching pairs. "
                         f"Received: {int(match.sum())} matching of {match.size}")
    return distances, match


def roc_curve(distances, match):
    """Returns `(far, tar, thresholds)`: false and true accept rates at each distinct threshold.

    The first point accepts nothing (threshold -inf); the rest sit at each distinct distance, ascending.
    """
    distances, match = _check_pairs(distances, match)
    far, tar, scores = sk_metrics.roc_curve(match, -distances, drop_intermediate=False)
    return far, tar, -scores


def roc_auc(distances, match, curve=None) -> float:
    """P(d_match < d_nonmatch) + ½·P(tie): the area under the ROC curve."""
    far, tar, _ = curve if curve is not None else roc_curve(distances, match)
    return float(sk_metrics.auc(far, tar))


def equal_error_rate(distances, match, curve=None) -> float:
    """The rate where FAR equals FRR = 1 − TAR, on the piecewise-linear ROC curve."""
    far, tar, _ = curve if curve is not None else roc_curve(distances, match)
    frr = 1.0 - tar
    gap = far - frr  # rises from -1 (accept nothing) to 1 (accept all)
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(far[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def tar_at_far(distances, match, far_target: float, curve=None) -> float:
    """The highest true accept rate among thresholds whose false accept rate is <= `far_target`."""
    far, tar, _ = curve if curve is not None else roc_curve(distances, match)
    return float(tar[far <= far_target].max())


def best_threshold(distances, match) -> tuple[float, float]:
    """The distance threshold with the highest pair accuracy, and that accuracy.

    The threshold is the midpoint between the last accepted and the first rejected distance.
    """
    far, tar, thresholds = roc_curve(distances, match)
    distances, match = _check_pairs(distances, match)
    accuracy = (tar * match.sum() + (1.0 - far) * (~match).sum()) / match.size
    i = int(np.argmax(accuracy))
    above = distances[distances > thresholds[i]]
    if i == 0:
        threshold = float(distances.min()) - 1e-6
    elif above.size:
        threshold = float((thresholds[i] + above.min()) / 2.0)
    else:
        threshold = float(thresholds[i])
    return threshold, float(accuracy[i])


def sample_pairs(labels, n_pairs: int, seed: int = 0):
    """Draws `n_pairs` index pairs, half matching (same label, distinct items), half not.

    Returns:
        `(first [n], second [n], match [n] bool)`.

    Raises:
        ValueError: no class with two items, or a single class.
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2 or counts.max() < 2:
        raise DataError("pairs need two classes and a class with two items. "
                         f"Received: {len(classes)} classes, largest of {counts.max()}")
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    n_pos = n_pairs // 2
    # Matching: a class weighted by its number of pairs, then two distinct members.
    pair_counts = counts * (counts - 1.0)
    cls = rng.choice(len(classes), size=n_pos, p=pair_counts / pair_counts.sum())
    a = rng.integers(0, counts[cls])
    b = (a + 1 + rng.integers(0, np.maximum(counts[cls] - 1, 1))) % counts[cls]
    pos_first = np.array([members[c][i] for c, i in zip(cls, a)], dtype=np.int64)
    pos_second = np.array([members[c][i] for c, i in zip(cls, b)], dtype=np.int64)
    # Non-matching: uniform item pairs, redrawn until labels differ.
    neg_first = rng.integers(0, len(labels), size=n_pairs - n_pos)
    neg_second = rng.integers(0, len(labels), size=n_pairs - n_pos)
    clash = labels[neg_first] == labels[neg_second]
    while clash.any():
        neg_second[clash] = rng.integers(0, len(labels), size=int(clash.sum()))
        clash = labels[neg_first] == labels[neg_second]
    first = np.r_[pos_first, neg_first]
    second = np.r_[pos_second, neg_second]
    match = np.r_[np.ones(n_pos, bool), np.zeros(n_pairs - n_pos, bool)]
    return first, second, match


def verification_metrics(distances, match, threshold: float | None = None) -> dict:
    """ROC AUC, EER and TAR at FAR 1e-2 and 1e-3 on the pairs; with a threshold, the decisions it makes on them.

    Args:
        distances: `[P]` pair distances.
        match: `[P]` bool, True for same-class pairs.
        threshold: a match threshold calibrated on other pairs (e.g. `best_threshold` on validation pairs).

    Returns:
        A dict: `roc_auc`, `eer`, `tar_at_far_1e-2`, `tar_at_far_1e-3`, `num_pairs`, and with a threshold
        `threshold`, `accuracy`, `far` and `frr` at it.
    """
    distances, match = _check_pairs(distances, match)
    curve = roc_curve(distances, match)  # sorted once, shared by the four curve metrics
    out = {
        "roc_auc": roc_auc(distances, match, curve),
        "eer": equal_error_rate(distances, match, curve),
        "tar_at_far_1e-2": tar_at_far(distances, match, 1e-2, curve),
        "tar_at_far_1e-3": tar_at_far(distances, match, 1e-3, curve),
        "num_pairs": int(distances.size),
    }
    if threshold is not None:
        accepted = distances <= threshold
        out.update(threshold=float(threshold), accuracy=float(np.mean(accepted == match)),
                   far=float(accepted[~match].mean()), frr=float((~accepted[match]).mean()))
    return out
