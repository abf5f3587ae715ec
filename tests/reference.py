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


def retrieval(embeddings, labels, ks=(1, 2, 4, 8), metric="L2", queries=None):
    """Ranks every other item by (distance, index), per query (default: every item), and scores it."""
    n = len(labels)
    p1, rp, mapr, recall = [], [], [], {k: [] for k in ks}
    for q in (range(n) if queries is None else queries):
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


def _negatives(labels, a):
    return [n for n in range(len(labels)) if labels[n] != labels[a]]


def _positive_pairs(labels):
    return [(a, p) for a in range(len(labels)) for p in range(len(labels)) if a != p and labels[a] == labels[p]]


def triplet_semihard(labels, embeddings, margin, metric="L2"):
    """ALGORITHMS.md: per (a, p), the closest negative farther than p, else the farthest; anchors without negatives skipped."""
    d = pairwise(embeddings, metric)
    total, count = 0.0, 0
    for a, p in _positive_pairs(labels):
        negatives = [d[a, n] for n in _negatives(labels, a)]
        if not negatives:
            continue
        farther = [v for v in negatives if v > d[a, p]]
        chosen = min(farther) if farther else max(negatives)
        total += max(margin + d[a, p] - chosen, 0.0)
        count += 1
    return total / count if count else 0.0


def triplet_batch_hard(labels, embeddings, margin, soft=False, metric="L2"):
    d = pairwise(embeddings, metric)
    total, count = 0.0, 0
    for a in range(len(labels)):
        positives = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [d[a, n] for n in _negatives(labels, a)]
        if not positives or not negatives:
            continue
        gap = max(positives) - min(negatives)
        total += math.log1p(math.exp(gap)) if soft else max(gap + margin, 0.0)
        count += 1
    return total / count if count else 0.0


def triplet_batch_all(labels, embeddings, margin, active_only=False, metric="L2"):
    d = pairwise(embeddings, metric)
    total, count, active = 0.0, 0, 0
    for a, p in _positive_pairs(labels):
        for n in _negatives(labels, a):
            term = max(margin + d[a, p] - d[a, n], 0.0)
            total += term
            count += 1
            active += term > 0
    denominator = active if active_only else count
    return total / denominator if denominator else 0.0


def lifted_struct(labels, embeddings, margin):
    d = pairwise(embeddings, "L2")
    total, count = 0.0, 0
    for i, j in _positive_pairs(labels):
        if i > j:
            continue
        s = sum(math.exp(margin - d[i, k]) for k in _negatives(labels, i))
        s += sum(math.exp(margin - d[j, l]) for l in _negatives(labels, j))
        objective = math.log(s) + d[i, j] if s > 0 else -math.inf
        total += max(objective, 0.0) ** 2
        count += 1
    return total / (2 * count) if count else 0.0


def addons_triplet_semihard(labels, embeddings, margin):
    """A line-by-line NumPy port of tensorflow-addons 0.23 `triplet_semihard_loss` (L2), N²×N tile included."""
    labels = np.asarray(labels).reshape(-1, 1)
    pdist = pairwise(embeddings, "L2")
    n = len(labels)
    adjacency = labels == labels.T
    adjacency_not = ~adjacency
    pdist_tile = np.tile(pdist, [n, 1])
    mask = np.tile(adjacency_not, [n, 1]) & (pdist_tile > pdist.T.reshape(-1, 1))
    mask_final = (mask.sum(1, keepdims=True) > 0).reshape(n, n).T

    def masked_minimum(data, m):
        maxs = data.max(1, keepdims=True)
        return ((data - maxs) * m).min(1, keepdims=True) + maxs

    def masked_maximum(data, m):
        mins = data.min(1, keepdims=True)
        return ((data - mins) * m).max(1, keepdims=True) + mins

    negatives_outside = masked_minimum(pdist_tile, mask.astype(float)).reshape(n, n).T
    negatives_inside = np.tile(masked_maximum(pdist, adjacency_not.astype(float)), [1, n])
    semi_hard = np.where(mask_final, negatives_outside, negatives_inside)
    loss_mat = margin + pdist - semi_hard
    mask_positives = adjacency.astype(float) - np.eye(n)
    return np.maximum(loss_mat * mask_positives, 0.0).sum() / mask_positives.sum()


def addons_lifted_struct(labels, embeddings, margin):
    """A line-by-line NumPy port of tensorflow-addons 0.23 `lifted_struct_loss`."""
    labels = np.asarray(labels).reshape(-1, 1)
    pdist = pairwise(embeddings, "L2")
    n = len(labels)
    adjacency = labels == labels.T
    diff = margin - pdist
    mask = (~adjacency).astype(float)
    row_minimums = diff.min(1, keepdims=True)
    row_negative_maximums = ((diff - row_minimums) * mask).max(1, keepdims=True) + row_minimums
    max_elements = np.maximum(row_negative_maximums, row_negative_maximums.T)
    diff_tiled = np.tile(diff, [n, 1])
    mask_tiled = np.tile(mask, [n, 1])
    max_elements_vect = max_elements.T.reshape(-1, 1)
    loss_exp_left = (np.exp(diff_tiled - max_elements_vect) * mask_tiled).sum(1, keepdims=True).reshape(n, n)
    loss_mat = max_elements + np.log(loss_exp_left + loss_exp_left.T) + pdist
    mask_positives = adjacency.astype(float) - np.eye(n)
    num_positives = mask_positives.sum() / 2.0
    return 0.25 * np.square(np.maximum(loss_mat * mask_positives, 0.0)).sum() / num_positives


def addons_triplet_hard(labels, embeddings, margin, soft=False):
    """A line-by-line NumPy port of tensorflow-addons 0.23 `triplet_hard_loss` (L2): every anchor counts;
    masked maximum/minimum give a missing positive distance 0 and a missing negative the row's maximum."""
    labels = np.asarray(labels).reshape(-1, 1)
    pdist = pairwise(embeddings, "L2")
    n = len(labels)
    adjacency = labels == labels.T
    adjacency_not = ~adjacency
    mask_positives = adjacency.astype(float) - np.eye(n)
    mins = pdist.min(1, keepdims=True)
    hard_positives = ((pdist - mins) * mask_positives).max(1, keepdims=True) + mins
    maxs = pdist.max(1, keepdims=True)
    hard_negatives = ((pdist - maxs) * adjacency_not).min(1, keepdims=True) + maxs
    gap = hard_positives - hard_negatives
    losses = np.log1p(np.exp(gap)) if soft else np.maximum(gap + margin, 0.0)
    return float(losses.mean())


def joint_representation_similarity(labels, features, single_bandwidth):
    """JRD's JRS by plain loops: per layer a Gaussian kernel at {b/2, b, 2b} (or b) of squared distances."""
    n = len(labels)
    joint = np.ones((n, n))
    for layer, single in zip(features, single_bandwidth):
        z = np.asarray(layer, np.float64).reshape(n, -1)
        d = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(n)] for i in range(n)])
        b = max(sum(d[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1)), 1e-12)
        widths = [b] if single else [b / 2, b, 2 * b]
        for i in range(n):
            for j in range(n):
                joint[i, j] *= sum(np.exp(-d[i, j] / w) for w in widths) / len(widths)
    pairs = [(i, j) for i in range(n) for j in range(n) if labels[i] != labels[j]]
    return sum(joint[i, j] for i, j in pairs) / len(pairs) if pairs else 0.0


def supervised_contrastive(labels, embeddings, scale, metric="angular"):
    """SupCon: per anchor with positives, mean over them of −log(exp(−s·D_ap) / Σ_{k≠a} exp(−s·D_ak)); mean over
    those anchors (0 when none has a positive)."""
    d = pairwise(np.asarray(embeddings, np.float64), metric)
    n = len(labels)
    losses = []
    for a in range(n):
        others = [k for k in range(n) if k != a]
        positives = [p for p in others if labels[p] == labels[a]]
        if not positives:
            continue
        normaliser = math.log(sum(math.exp(-scale * d[a, k]) for k in others))
        losses.append(sum(normaliser + scale * d[a, p] for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


# Losses beyond triplet, as pytorch-metric-learning 2.9 defines them (its default reducers).

def _unit(embeddings):
    e = np.asarray(embeddings, np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _pair_matrix(embeddings, metric):
    """(matrix, inverted): cosine similarities for "angular", distances otherwise."""
    if metric == "angular":
        unit = _unit(embeddings)
        return unit @ unit.T, True
    return pairwise(np.asarray(embeddings, np.float64), metric), False


def _margin(x, y, inverted):
    return y - x if inverted else x - y


def _all_pairs(labels):
    n = len(labels)
    positive = [[i != j and labels[i] == labels[j] for j in range(n)] for i in range(n)]
    negative = [[labels[i] != labels[j] for j in range(n)] for i in range(n)]
    return positive, negative


def multi_similarity_mined(labels, embeddings, epsilon=0.1, metric="angular"):
    """MultiSimilarityMiner: per anchor, positives within ε of beating its hardest negative and negatives within ε
    of beating its hardest positive (on similarities for angular, on distances otherwise)."""
    m, inverted = _pair_matrix(embeddings, metric)
    positive, negative = _all_pairs(labels)
    n = len(labels)
    kept_positive = [[False] * n for _ in range(n)]
    kept_negative = [[False] * n for _ in range(n)]
    for a in range(n):
        ps = [j for j in range(n) if positive[a][j]]
        ns = [j for j in range(n) if negative[a][j]]
        if not ps or not ns:
            continue
        for p in ps:
            if inverted:
                kept_positive[a][p] = m[a, p] - epsilon < max(m[a, k] for k in ns)
            else:
                kept_positive[a][p] = m[a, p] + epsilon > min(m[a, k] for k in ns)
        for k in ns:
            if inverted:
                kept_negative[a][k] = m[a, k] + epsilon > min(m[a, p] for p in ps)
            else:
                kept_negative[a][k] = m[a, k] - epsilon < max(m[a, p] for p in ps)
    return np.array(kept_positive), np.array(kept_negative)


def multi_similarity(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, metric="angular", epsilon=None):
    """Per anchor (1/α) log(1 + Σ_P exp(α·margin(S, λ))) + (1/β) log(1 + Σ_N exp(β·margin(λ, S))); mean over all
    anchors. `epsilon`: only the pairs Multi-Similarity's miner keeps."""
    m, inverted = _pair_matrix(embeddings, metric)
    positive, negative = (multi_similarity_mined(labels, embeddings, epsilon, metric) if epsilon is not None
                          else _all_pairs(labels))
    n = len(labels)
    total = 0.0
    for a in range(n):
        pos = sum(math.exp(alpha * _margin(m[a, p], base, inverted)) for p in range(n) if positive[a][p])
        neg = sum(math.exp(beta * _margin(base, m[a, k], inverted)) for k in range(n) if negative[a][k])
        total += math.log(1 + pos) / alpha + math.log(1 + neg) / beta
    return total / n


def circle(labels, embeddings, m=0.4, gamma=80.0):
    """Per anchor with a positive and a negative: softplus(lse_N γ α_n (S_n − m) + lse_P −γ α_p (S_p − 1 + m)),
    α_p = max(1 + m − S_p, 0), α_n = max(S_n + m, 0); mean over the anchors with a non-zero loss."""
    s, _ = _pair_matrix(embeddings, "angular")
    positive, negative = _all_pairs(labels)
    n = len(labels)
    losses = []
    for a in range(n):
        ps = [p for p in range(n) if positive[a][p]]
        ns = [k for k in range(n) if negative[a][k]]
        if not ps or not ns:
            continue
        lse_p = _logsumexp([-gamma * max(1 + m - s[a, p], 0) * (s[a, p] - (1 - m)) for p in ps])
        lse_n = _logsumexp([gamma * max(s[a, k] + m, 0) * (s[a, k] - m) for k in ns])
        value = _softplus(lse_p + lse_n)
        if value > 0:
            losses.append(value)
    return sum(losses) / len(losses) if losses else 0.0


def ntxent(labels, embeddings, temperature=0.07, metric="angular"):
    """Per positive pair (a, p): −log(e^{l_ap} / (e^{l_ap} + Σ_{N_a} e^{l_an})), l = S/τ (−D/τ for a distance);
    mean over positive pairs."""
    m, inverted = _pair_matrix(embeddings, metric)
    logits = (m if inverted else -m) / temperature
    positive, negative = _all_pairs(labels)
    n = len(labels)
    terms = []
    for a in range(n):
        for p in range(n):
            if positive[a][p]:
                rest = [logits[a, k] for k in range(n) if negative[a][k]]
                terms.append(_logsumexp([logits[a, p]] + rest) - logits[a, p])
    return sum(terms) / len(terms) if terms else 0.0


def proxy_anchor(labels, embeddings, proxies, margin=0.1, alpha=32.0):
    """(1/|C⁺|) Σ_{C⁺} log(1 + Σ_{x∈c} e^{−α(s−δ)}) + (1/C) Σ_c log(1 + Σ_{x∉c} e^{α(s+δ)})."""
    cos = _unit(embeddings) @ _unit(proxies).T
    classes = len(proxies)
    present = sorted(set(int(y) for y in labels))
    pos = sum(math.log(1 + sum(math.exp(-alpha * (cos[i, c] - margin)) for i in range(len(labels))
                                if labels[i] == c)) for c in present)
    neg = sum(math.log(1 + sum(math.exp(alpha * (cos[i, c] + margin)) for i in range(len(labels))
                                if labels[i] != c)) for c in range(classes))
    return (pos / len(present) if present else 0.0) + neg / classes


def arcface(labels, cosines, scale=64.0, margin=0.5):
    """Cross-entropy of s·cos θ_j with the true class's logit s·cos(θ_y + m) (s·(cos θ_y − m sin m) past π − m);
    mean over the batch."""
    cosines = np.asarray(cosines, np.float64)
    total = 0.0
    for row, y in zip(cosines, labels):
        theta = math.acos(min(max(row[y], -1.0), 1.0))
        target = math.cos(theta + margin) if theta <= math.pi - margin else math.cos(theta) - margin * math.sin(
            margin)
        logits = [scale * (target if j == y else c) for j, c in enumerate(row)]
        total += _logsumexp(logits) - logits[y]
    return total / len(labels)


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def polar_transform(image, height, width):
    """SAFA's polar transform, one output pixel at a time: bilinear sampling at (x row, y column), clamped."""
    a_h, a_w, channels = image.shape
    out = np.zeros((height, width, channels))
    for i in range(height):
        for j in range(width):
            radius = (height - i) / height
            x = a_h / 2 - a_h / 2 * radius * math.cos(2 * math.pi * j / width)
            y = a_w / 2 + a_w / 2 * radius * math.sin(2 * math.pi * j / width)
            x, y = min(max(x, 0.0), a_h - 1), min(max(y, 0.0), a_w - 1)
            x0, y0 = int(math.floor(x)), int(math.floor(y))
            x1, y1 = min(x0 + 1, a_h - 1), min(y0 + 1, a_w - 1)
            fx, fy = x - x0, y - y0
            out[i, j] = ((1 - fx) * (1 - fy) * image[x0, y0] + (1 - fx) * fy * image[x0, y1]
                         + fx * (1 - fy) * image[x1, y0] + fx * fy * image[x1, y1])
    return out


def cross_view_soft_margin(labels, pairs, alpha, metric="L2"):
    """Every triplet (anchor, its match, an in-batch negative of another label), both directions, averaged."""
    total, count = 0.0, 0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if labels[i] == labels[j]:
                continue
            matched = distance(pairs[i][0], pairs[i][1], metric)
            for anchor, negative in ((pairs[i][0], pairs[j][1]), (pairs[i][1], pairs[j][0])):
                total += math.log1p(math.exp(alpha * (matched - distance(anchor, negative, metric))))
                count += 1
    return total / count if count else 0.0


def symmetric_info_nce(labels, pairs, temperature):
    """½ (mean over queries of −log softmax of the match among the match and the other labels' references, and the
    same for references)."""
    n = len(labels)
    total = 0.0
    for view in (0, 1):
        for i in range(n):
            logits = [float(np.dot(pairs[i][view], pairs[j][1 - view])) / temperature
                      for j in range(n) if j == i or labels[j] != labels[i]]
            own = float(np.dot(pairs[i][view], pairs[i][1 - view])) / temperature
            top = max(logits)
            total += -(own - top - math.log(sum(math.exp(v - top) for v in logits)))
    return total / (2 * n)


def cross_view_recall(queries, references, query_labels, reference_labels, k, metric="L2"):
    """Share of queries (with a true reference) whose nearest true reference has fewer than k references strictly
    nearer."""
    hits, scored = 0, 0
    for q, label in zip(queries, query_labels):
        d = [distance(q, r, metric) for r in references]
        true = [dist for dist, r_label in zip(d, reference_labels) if r_label == label]
        if not true:
            continue
        scored += 1
        hits += sum(dist < min(true) for dist in d) < k
    return hits / scored


def _unit_vector(v):
    v = np.asarray(v, np.float64)
    norm = math.sqrt(float(v @ v))
    return v / norm if norm > 0 else v


def nt_xent_views(views_1, views_2, temperature, negatives=()):
    """SimCLR's NT-Xent, one view at a time: −log(exp(s_i,twin/τ) / Σ_{k≠i} exp(s_ik/τ)), mean over the 2N views."""
    every = [_unit_vector(v) for v in list(views_1) + list(views_2)]
    candidates = every + [_unit_vector(v) for v in negatives]
    n = len(views_1)
    total = 0.0
    for i, anchor in enumerate(every):
        twin = (i + n) % (2 * n)
        below = sum(math.exp(float(anchor @ c) / temperature) for k, c in enumerate(candidates) if k != i)
        total += -math.log(math.exp(float(anchor @ every[twin]) / temperature) / below)
    return total / (2 * n)


def info_nce(queries, keys, queue, temperature):
    """MoCo's InfoNCE, one query at a time, against every key of the batch and the queue; its own key positive."""
    total = 0.0
    candidates = [_unit_vector(k) for k in keys] + [_unit_vector(k) for k in queue]
    for i, q in enumerate(queries):
        q = _unit_vector(q)
        below = sum(math.exp(float(q @ c) / temperature) for c in candidates)
        total += -math.log(math.exp(float(q @ candidates[i]) / temperature) / below)
    return total / len(queries)


def byol(targets, predictions):
    return float(np.mean([2 - 2 * float(_unit_vector(p) @ _unit_vector(t)) for t, p in zip(targets, predictions)]))


def simsiam(targets, predictions):
    return float(np.mean([-float(_unit_vector(p) @ _unit_vector(t)) for t, p in zip(targets, predictions)]))


def barlow_twins(z1, z2, weight, epsilon=1e-5):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape
    a = [(z1[:, j] - z1[:, j].mean()) / math.sqrt(z1[:, j].var() + epsilon) for j in range(d)]
    b = [(z2[:, j] - z2[:, j].mean()) / math.sqrt(z2[:, j].var() + epsilon) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else weight * c ** 2
    return total


def vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, epsilon=1e-4):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape

    def variance(z):
        return sum(max(0.0, 1 - math.sqrt(z[:, j].var(ddof=1) + epsilon)) for j in range(d)) / d

    def covariance(z):
        c = z - z.mean(axis=0)
        return sum((float(c[:, i] @ c[:, j]) / (n - 1)) ** 2 for i in range(d) for j in range(d) if i != j) / d

    invariance = sum((z1[k, j] - z2[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    return lam * invariance + mu * (variance(z1) + variance(z2)) + nu * (covariance(z1) + covariance(z2))


def weighted_knn_accuracy(bank, bank_labels, queries, query_labels, k, temperature):
    """InstDisc / MoCo's kNN monitor, one query at a time: the k most cosine-similar bank items vote
    exp(s / T) for their class; accuracy of the top-voted class (ties: the lowest class id)."""
    bank = [_unit_vector(b) for b in bank]
    right = 0
    for q, label in zip(queries, query_labels):
        q = _unit_vector(q)
        similarities = [float(q @ b) for b in bank]
        order = sorted(range(len(bank)), key=lambda i: (-similarities[i], i))[:k]
        votes = {}
        for i in order:
            votes[bank_labels[i]] = votes.get(bank_labels[i], 0.0) + math.exp(similarities[i] / temperature)
        best = max(sorted(votes), key=lambda c: votes[c])
        right += int(best == label)
    return right / len(queries)


def multi_similarity_with_memory(batches, memory_size, alpha=2.0, beta=50.0, base=0.5):
    """XBM over a sequence of `(labels, embeddings)` batches, as PML's CrossBatchMemory runs it: each batch enters a
    ring of `memory_size` slots first, then each anchor of the batch is scored (Multi-Similarity, cosine) against
    every filled slot but its own. Returns the loss of each batch."""
    slots_embeddings, slots_labels, position, values = [None] * memory_size, [None] * memory_size, 0, []
    for labels, embeddings in batches:
        own = []
        for label, embedding in zip(labels, embeddings):
            slots_embeddings[position], slots_labels[position] = _unit_vector(embedding), label
            own.append(position)
            position = (position + 1) % memory_size
        total = 0.0
        for a, (label, embedding) in enumerate(zip(labels, embeddings)):
            anchor = _unit_vector(embedding)
            pos = neg = 0.0
            for slot in range(memory_size):
                if slots_embeddings[slot] is None or slot == own[a]:
                    continue
                similarity = float(anchor @ slots_embeddings[slot])
                if slots_labels[slot] == label:
                    pos += math.exp(alpha * (base - similarity))
                else:
                    neg += math.exp(beta * (similarity - base))
            total += math.log(1 + pos) / alpha + math.log(1 + neg) / beta
        values.append(total / len(labels))
    return values
