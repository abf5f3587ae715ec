"""pytorch-metric-learning's values for the cases `tests/test_pml_parity.py` sends (JSON on stdin, JSON out).

Runs in an environment with torch and pytorch-metric-learning 2.9 (`make .venv-pml`), never imports reprlearn.
Each case names a PML loss or miner, its arguments, the distance, the labels, embeddings and any weights.
"""

import json
import math
import sys

import torch
from pytorch_metric_learning import distances, losses, miners


def distance(name):
    return {"cosine": distances.CosineSimilarity(),
            "L2": distances.LpDistance(normalize_embeddings=False),
            "squared-L2": distances.LpDistance(normalize_embeddings=False, power=2)}[name]


def run_memory(case):
    """CrossBatchMemory over a sequence of batches: each batch's loss and gradient."""
    loss = losses.CrossBatchMemory(getattr(losses, case["loss"])(distance=distance(case["distance"]), **case["args"]),
                                   embedding_size=case["embedding_size"], memory_size=case["memory_size"])
    out = []
    for labels, embeddings in case["batches"]:
        embeddings = torch.tensor(embeddings, dtype=torch.float64, requires_grad=True)
        value = loss(embeddings, torch.tensor(labels))
        value.backward()
        out.append({"value": float(value), "gradient": embeddings.grad.tolist()})
    return out


def run(case):
    if case["kind"] == "memory":
        return run_memory(case)
    labels = torch.tensor(case["labels"])
    embeddings = torch.tensor(case["embeddings"], dtype=torch.float64, requires_grad=True)
    kind, args = case["kind"], case.get("args", {})
    if kind == "miner":
        a1, p, a2, n = miners.MultiSimilarityMiner(distance=distance(case["distance"]), **args)(embeddings, labels)
        size = len(labels)
        positive, negative = torch.zeros(size, size, dtype=torch.bool), torch.zeros(size, size, dtype=torch.bool)
        positive[a1, p], negative[a2, n] = True, True
        return {"positive": positive.tolist(), "negative": negative.tolist()}
    if kind in ("ProxyAnchorLoss", "ArcFaceLoss", "SubCenterArcFaceLoss", "CosFaceLoss"):
        weights = torch.tensor(case["weights"], dtype=torch.float64)
        loss = getattr(losses, kind)(num_classes=case["num_classes"], embedding_size=embeddings.shape[1], **args)
        loss = loss.double()
        if kind == "ProxyAnchorLoss":
            loss.proxies.data = weights          # [C, d]
        else:
            loss.W.data = weights                # [d, C·k]
        value = loss(embeddings, labels)
    else:
        miner = miners.MultiSimilarityMiner(distance=distance(case["distance"]), **case["miner"]) if case.get(
            "miner") is not None else None
        loss = getattr(losses, kind)(distance=distance(case["distance"]), **args)
        value = loss(embeddings, labels, miner(embeddings, labels) if miner else None)
    value.backward()
    gradient = embeddings.grad
    return {"value": float(value), "gradient": (gradient if gradient is not None else torch.zeros_like(
        embeddings)).tolist(), "finite": bool(math.isfinite(float(value)))}


print(json.dumps([run(case) for case in json.load(sys.stdin)]))
