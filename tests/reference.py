"""Plain NumPy loop references: slow, readable, one pair at a time."""

import math

import numpy as np


def distance(a, b, metric="L2"):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "angular":
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            return 1.0
        return max(1.0 - float(a @ b) / (na * nb), 0.0)
    sq = float(np.sum((a - b) ** 2))
    return sq if metric == "squared-L2" else math.sqrt(sq)


def pairwise(embeddings, metric="L2"):
    n = len(embeddings)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = distance(embeddings[i], embeddings[j], metric)
    return out


def contrastive_pair(match, d, margin):
    return match * d ** 2 + (1 - match) * max(margin - d, 0.0) ** 2


def in_batch_contrastive(labels, embeddings, margin, metric="L2"):
    total, count = 0.0, 0
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            total += contrastive_pair(float(labels[i] == labels[j]),
                                      distance(embeddings[i], embeddings[j], metric), margin)
            count += 1
    return total / count if count else 0.0


def retrieval(embeddings, labels, ks=(1, 2, 4, 8), metric="L2"):
    """Ranks every other item by (distance, index), per query, and scores it."""
    n = len(labels)
    p1, rp, mapr, recall = [], [], [], {k: [] for k in ks}
    for q in range(n):
        r = sum(1 for j in range(n) if j != q and labels[j] == labels[q])
        if r == 0:
            continue
        others = sorted((distance(embeddings[q], embeddings[j], metric), j) for j in range(n) if j != q)
        rel = [labels[j] == labels[q] for _, j in others]
        p1.append(float(rel[0]))
        rp.append(sum(rel[:r]) / r)
        hits, ap = 0, 0.0
        for i in range(r):
            if rel[i]:
                hits += 1
                ap += hits / (i + 1)
        mapr.append(ap / r)
        for k in ks:
            recall[k].append(float(any(rel[:k])))
    out = {"precision_at_1": np.mean(p1), "r_precision": np.mean(rp), "map_at_r": np.mean(mapr)}
    out.update({f"recall_at_{k}": np.mean(v) for k, v in recall.items()})
    return out


def roc_points(distances, match):
    """(far, tar) accepting d <= t for t = -inf and every distinct distance."""
    pos, neg = sum(match), len(match) - sum(match)
    points = [(0.0, 0.0)]
    for t in sorted(set(distances)):
        tp = sum(1 for d, m in zip(distances, match) if d <= t and m)
        fp = sum(1 for d, m in zip(distances, match) if d <= t and not m)
        points.append((fp / neg, tp / pos))
    return points


def auc_mann_whitney(distances, match):
    pos = [d for d, m in zip(distances, match) if m]
    neg = [d for d, m in zip(distances, match) if not m]
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p < q else (0.5 if p == q else 0.0)
    return wins / (len(pos) * len(neg))


def tar_at_far(distances, match, target):
    return max(tar for far, tar in roc_points(distances, match) if far <= target)


def best_accuracy(distances, match):
    best = 0.0
    for t in [-np.inf] + sorted(set(distances)):
        acc = np.mean([(d <= t) == m for d, m in zip(distances, match)])
        best = max(best, acc)
    return best
