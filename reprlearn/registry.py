"""One table of the loss names a config can use: how each is built, what batches it needs, what it accepts.

Config validation, the training drivers and the tuner read this table; nothing else in the
package lists loss names.

Example:
    spec = LOSSES["triplet_semihard"]
    spec.batch            # "pk": P classes × K examples per batch
    loss = make_loss("triplet_semihard", margin=0.2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import keras

from reprlearn.distances import METRICS
from reprlearn.losses import (AMSoftmaxLoss, ContrastiveLoss, InBatchContrastiveLoss, LiftedStructLoss,
                              SupervisedContrastiveLoss, TripletLoss)


class LossOptions(NamedTuple):
    """The `loss.*` values a factory may read; each loss uses the ones it accepts."""
    margin: float
    distance: str = "L2"
    soft: bool = False
    cross_replica: bool = True
    scale: float = 30.0


@dataclass(frozen=True)
class LossSpec:
    """A config loss name: its Keras loss factory, batch kind and the options it accepts."""
    build: Callable[[LossOptions], keras.losses.Loss]
    batch: str                     # "pk": P×K batches; "pairs": a Siamese model on pairs
    distances: tuple[str, ...]     # allowed `loss.distance` values (the ranking metric of the run)
    soft: bool = False             # accepts `loss.soft`
    classifier: bool = False       # trains the tower through a CosineClassifier head on dense class ids


LOSSES: dict[str, LossSpec] = {
    # Contrastive loss over every pair of a P×K batch.
    "contrastive": LossSpec(
        lambda o: InBatchContrastiveLoss(margin=o.margin, distance=o.distance, cross_replica=o.cross_replica),
        "pk", METRICS),
    # Contrastive loss on a Siamese pair model fed balanced pairs.
    "pair_contrastive": LossSpec(lambda o: ContrastiveLoss(margin=o.margin), "pairs", METRICS),
    # Triplet loss, FaceNet semi-hard negatives.
    "triplet_semihard": LossSpec(
        lambda o: TripletLoss("semi-hard", o.margin, o.distance, cross_replica=o.cross_replica), "pk", METRICS),
    # Triplet loss, hardest positive and negative per anchor (soft: softplus instead of the hinge).
    "triplet_hard": LossSpec(
        lambda o: TripletLoss("batch-hard", o.margin, o.distance, soft=o.soft, cross_replica=o.cross_replica),
        "pk", METRICS, soft=True),
    # Triplet loss over every triplet, averaged over the active ones.
    "triplet_batch_all": LossSpec(
        lambda o: TripletLoss("batch-all", o.margin, o.distance, active_only=True, cross_replica=o.cross_replica),
        "pk", METRICS),
    # Lifted structured loss, defined on L2 distances.
    "lifted_struct": LossSpec(lambda o: LiftedStructLoss(margin=o.margin, cross_replica=o.cross_replica),
                              "pk", ("L2",)),
    # Supervised contrastive (SupCon): a softmax over −loss.scale × distance per anchor (loss.scale = 1 / τ); with
    # data.positives: views it is SimCLR's NT-Xent, learning from augmented views without labels.
    "supervised_contrastive": LossSpec(
        lambda o: SupervisedContrastiveLoss(scale=o.scale, distance=o.distance, cross_replica=o.cross_replica),
        "pk", METRICS),
    # AM-Softmax: cosine class weights with an additive margin (loss.margin) and a scale (loss.scale).
    "am_softmax": LossSpec(lambda o: AMSoftmaxLoss(scale=o.scale, margin=o.margin), "pk", METRICS, classifier=True),
}
# The metric losses mined in P×K batches (what `reprlearn tune` searches).
IN_BATCH_LOSSES = tuple(name for name, spec in LOSSES.items() if spec.batch == "pk" and not spec.classifier)


def make_loss(name: str, margin: float, distance: str = "L2", soft: bool = False, cross_replica: bool = True,
              scale: float = 30.0) -> keras.losses.Loss:
    """The Keras loss a config names; ValueError naming the loss for an unknown name."""
    if name not in LOSSES:
        raise ValueError(f"loss name must be one of {list(LOSSES)}. Received: name={name!r}")
    return LOSSES[name].build(LossOptions(margin, distance, soft, cross_replica, scale))
