"""Each loss beyond triplet, and AM-Softmax and SupCon, against pytorch-metric-learning 2.9 itself: values and
gradients on the same embeddings, labels and weights, 3 batches × every distance PML's loss takes, plus edges.

PML runs in its own environment (`make .venv-pml`: torch 2.13 CPU and pytorch-metric-learning 2.9.0), in a
subprocess that never imports reprlearn (`tests/pml_values.py`).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from reprlearn.layers import CosineClassifier
from reprlearn.losses import (
    AMSoftmaxLoss,
    ArcFaceLoss,
    CircleLoss,
    MultiSimilarityLoss,
    MultiSimilarityMiner,
    NTXentLoss,
    ProxyAnchorLoss,
    SupervisedContrastiveLoss,
    multi_similarity_miner,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PML_PYTHON = ROOT / ".venv-pml" / "bin" / "python"
OURS = {"cosine": "angular", "L2": "L2", "squared-L2": "squared-L2"}


def pml(cases):
    assert PML_PYTHON.exists(), f"pytorch-metric-learning's environment is missing: run `make .venv-pml` ({PML_PYTHON})"
    done = subprocess.run([str(PML_PYTHON), str(ROOT / "tests" / "pml_values.py")], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def batches():
    """Three hand-sized batches (one with a singleton class), a batch without positives, one class, and identical
    embeddings."""
    rng = np.random.default_rng(7)
    out = []
    for n, classes in ((12, 3), (16, 5), (9, 4)):
        labels = rng.integers(0, classes, n)
        labels[-1] = classes  # a singleton class
        out.append((labels, rng.normal(size=(n, 6)) * 0.6))
    out.append((np.arange(6), rng.normal(size=(6, 6))))
    out.append((np.zeros(6, int), rng.normal(size=(6, 6))))
    out.append((np.array([0, 0, 1, 1, 2, 2]), np.ones((6, 6)) + rng.normal(size=(6, 6)) * 1e-3))
    return out


def ours_value_and_gradient(loss, labels, embeddings):
    x = tf.Variable(np.asarray(embeddings, np.float32))
    with tf.GradientTape() as tape:
        value = loss(labels, x)
    return float(value), tape.gradient(value, x).numpy()


def check(case, want, loss):
    value, gradient = ours_value_and_gradient(loss, np.array(case["labels"]), np.array(case["embeddings"]))
    assert value == pytest.approx(want["value"], rel=2e-4, abs=2e-6), case["kind"]
    np.testing.assert_allclose(gradient, np.array(want["gradient"]), rtol=2e-3, atol=2e-5, err_msg=case["kind"])


def test_pair_losses_match_pml():
    cases, ours = [], []
    for labels, e in batches():
        for name in ("cosine", "L2", "squared-L2"):
            # On unit vectors (where λ = 0.5 sits among the distances); PML's LpDistance without normalising.
            unit = e / np.linalg.norm(e, axis=1, keepdims=True)
            for miner in (None, {"epsilon": 0.1}):
                cases.append({"kind": "MultiSimilarityLoss", "distance": name, "labels": labels.tolist(),
                              "embeddings": unit.tolist(), "miner": miner})
                ours.append(MultiSimilarityLoss(distance=OURS[name], pair_miner=MultiSimilarityMiner(0.1)
                                                if miner else None))
            cases.append({"kind": "NTXentLoss", "distance": name, "labels": labels.tolist(),
                          "embeddings": e.tolist(), "args": {"temperature": 0.07 if name == "cosine" else 0.5}})
            ours.append(NTXentLoss(temperature=0.07 if name == "cosine" else 0.5, distance=OURS[name]))
        cases.append({"kind": "CircleLoss", "distance": "cosine", "labels": labels.tolist(), "embeddings": e.tolist()})
        ours.append(CircleLoss())
        cases.append({"kind": "CircleLoss", "distance": "cosine", "labels": labels.tolist(), "embeddings": e.tolist(),
                      "args": {"m": 0.25, "gamma": 256}, "miner": {"epsilon": 0.1}})
        ours.append(CircleLoss(m=0.25, gamma=256.0, pair_miner=MultiSimilarityMiner(0.1)))
    for case, want, loss in zip(cases, pml(cases), ours):
        check(case, want, loss)


def test_multi_similarity_miner_matches_pml():
    cases = [{"kind": "miner", "distance": name, "labels": labels.tolist(), "embeddings": e.tolist(),
              "args": {"epsilon": epsilon}}
             for labels, e in batches()[:3] for name in ("cosine", "L2") for epsilon in (0.1, 0.4)]
    for case, want in zip(cases, pml(cases)):
        positive, negative = multi_similarity_miner(case["labels"], np.array(case["embeddings"], np.float32),
                                                    case["args"]["epsilon"], OURS[case["distance"]])
        np.testing.assert_array_equal(positive.numpy(), np.array(want["positive"]))
        np.testing.assert_array_equal(negative.numpy(), np.array(want["negative"]))


def classifier_cases():
    """(case, our loss, sub-centres) for Proxy-Anchor, ArcFace (plain and sub-centre) and CosFace = AM-Softmax."""
    rng = np.random.default_rng(11)
    out = []
    for labels, e in batches():
        classes = int(labels.max()) + 2  # a class without items: its proxy only pushes
        proxies = rng.normal(size=(classes, e.shape[1]))
        out.append(({"kind": "ProxyAnchorLoss", "num_classes": classes, "weights": proxies.tolist(),
                     "labels": labels.tolist(), "embeddings": e.tolist()}, ProxyAnchorLoss(), 1, proxies.T))
        for kind, k, loss, args in (
                ("ArcFaceLoss", 1, ArcFaceLoss(margin=math.radians(28.6)), {}),
                ("SubCenterArcFaceLoss", 3, ArcFaceLoss(margin=math.radians(28.6)), {"sub_centers": 3}),
                ("CosFaceLoss", 1, AMSoftmaxLoss(scale=64.0, margin=0.35), {})):
            weights = rng.normal(size=(e.shape[1], classes * k))
            out.append(({"kind": kind, "num_classes": classes, "weights": weights.tolist(), "labels": labels.tolist(),
                         "embeddings": e.tolist(), "args": args}, loss, k, weights))
    return out


def test_classifier_losses_match_pml():
    """The Keras forms through a CosineClassifier whose weights are PML's (Proxy-Anchor's proxies transposed)."""
    prepared = classifier_cases()
    for (case, loss, k, weights), want in zip(prepared, pml([c for c, *_ in prepared])):
        layer = CosineClassifier(case["num_classes"], sub_centers=k)
        layer.build((None, len(case["embeddings"][0])))
        layer.class_weights.assign(weights.astype(np.float32))
        check(case, want, lambda y, x, layer=layer, loss=loss: loss(y, layer(x)))


def test_supervised_contrastive_matches_pml_where_it_has_negatives():
    """reprlearn's SupCon at scale 1/τ is PML's SupConLoss(τ) on any batch with negatives (one class: see docs)."""
    cases, ours = [], []
    for labels, e in batches()[:4] + batches()[5:]:
        for name, tau in (("cosine", 0.1), ("L2", 0.5)):
            cases.append({"kind": "SupConLoss", "distance": name, "labels": labels.tolist(), "embeddings": e.tolist(),
                          "args": {"temperature": tau}})
            ours.append(SupervisedContrastiveLoss(scale=1 / tau, distance=OURS[name]))
    for case, want, loss in zip(cases, pml(cases), ours):
        check(case, want, loss)
    # A batch of one class: PML returns 0 (no negatives); reprlearn's SupCon still scores the positives' spread.
    labels, e = batches()[4]
    (want,) = pml([{"kind": "SupConLoss", "distance": "cosine", "labels": labels.tolist(), "embeddings": e.tolist()}])
    assert want["value"] == 0.0
    assert ours_value_and_gradient(SupervisedContrastiveLoss(), labels, e)[0] > 0.0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
