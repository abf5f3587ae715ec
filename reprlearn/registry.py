"""One table of the loss names a config can use: how each is built, what batches it needs, what it accepts.

Config validation, the training drivers and the tuner read this table; nothing else in the
package lists loss names.

Example:
    spec = LOSSES["triplet_semihard"]
    spec.batch            # "pk": P classes × K examples per batch
    loss = spec.build(margin=0.2, distance="L2", soft=False, cross_replica=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras

from reprlearn.distances import METRICS
from reprlearn.losses import InBatchContrastiveLoss, ContrastiveLoss, LiftedStructLoss, TripletLoss


@dataclass(frozen=True)
class LossSpec:
    """A config loss name: its Keras loss factory, batch kind and the options it accepts."""
    build: Callable[..., keras.losses.Loss]
    batch: str                     # "pk": in-batch mining on P×K batches; "pairs": a Siamese model on pairs
    distances: tuple[str, ...]     # allowed `loss.distance` values
    soft: bool = False             # accepts `loss.soft`


# Every factory takes (margin, distance, soft, cross_replica); a pair loss has no batch to gather.
LOSSES: dict[str, LossSpec] = {
    # Contrastive loss over every pair of a P×K batch.
    "contrastive": LossSpec(
        lambda margin, distance, soft, cross_replica: InBatchContrastiveLoss(
            margin=margin, distance=distance, cross_replica=cross_replica), "pk", METRICS),
    # Contrastive loss on a Siamese pair model fed balanced pairs.
    "pair_contrastive": LossSpec(
        lambda margin, distance, soft, cross_replica: ContrastiveLoss(margin=margin), "pairs", METRICS),
    # Triplet loss, FaceNet semi-hard negatives.
    "triplet_semihard": LossSpec(
        lambda margin, distance, soft, cross_replica: TripletLoss(
            "semi-hard", margin, distance, cross_replica=cross_replica), "pk", METRICS),
    # Triplet loss, hardest positive and negative per anchor (soft: softplus instead of the hinge).
    "triplet_hard": LossSpec(
        lambda margin, distance, soft, cross_replica: TripletLoss(
            "batch-hard", margin, distance, soft=soft, cross_replica=cross_replica), "pk", METRICS, soft=True),
    # Triplet loss over every triplet, averaged over the active ones.
    "triplet_batch_all": LossSpec(
        lambda margin, distance, soft, cross_replica: TripletLoss(
            "batch-all", margin, distance, active_only=True, cross_replica=cross_replica), "pk", METRICS),
    # Lifted structured loss, defined on L2 distances.
    "lifted_struct": LossSpec(
        lambda margin, distance, soft, cross_replica: LiftedStructLoss(margin=margin, cross_replica=cross_replica),
        "pk", ("L2",)),
}
IN_BATCH_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.batch == "pk")


def make_loss(name: str, margin: float, distance: str = "L2", soft: bool = False,
              cross_replica: bool = True) -> keras.losses.Loss:
    """The Keras loss a config names; ValueError naming the loss for an unknown name."""
    if name not in LOSSES:
        raise ValueError(f"loss name must be one of {list(LOSSES)}. Received: name={name!r}")
    return LOSSES[name].build(margin=margin, distance=distance, soft=soft, cross_replica=cross_replica)
