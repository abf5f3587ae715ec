"""How each config loss name is built: the Keras loss behind every name of `reprlearn.config.losses`.

The names and what each accepts live in `reprlearn.config.losses` (`LOSS_TRAITS`), which config
validation reads without model code; this module adds how each is built.

Example:
    loss = make_loss("triplet_semihard", margin=0.2)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import keras

from reprlearn.config.losses import LOSS_TRAITS
from reprlearn.losses import (
    AMSoftmaxLoss,
    ContrastiveLoss,
    InBatchContrastiveLoss,
    LiftedStructLoss,
    SupervisedContrastiveLoss,
    TripletLoss,
)


class LossOptions(NamedTuple):
    """The `loss.*` values a factory may read; each loss uses the ones it accepts."""
    margin: float
    distance: str = "L2"
    soft: bool = False
    cross_replica: bool = True
    scale: float = 30.0


LOSS_BUILDERS: dict[str, Callable[[LossOptions], keras.losses.Loss]] = {
    "contrastive": lambda o: InBatchContrastiveLoss(margin=o.margin, distance=o.distance,
                                                    cross_replica=o.cross_replica),
    "pair_contrastive": lambda o: ContrastiveLoss(margin=o.margin),
    "triplet_semihard": lambda o: TripletLoss("semi-hard", o.margin, o.distance, cross_replica=o.cross_replica),
    "triplet_hard": lambda o: TripletLoss("batch-hard", o.margin, o.distance, soft=o.soft,
                                          cross_replica=o.cross_replica),
    "triplet_batch_all": lambda o: TripletLoss("batch-all", o.margin, o.distance, active_only=True,
                                               cross_replica=o.cross_replica),
    "lifted_struct": lambda o: LiftedStructLoss(margin=o.margin, cross_replica=o.cross_replica),
    # loss.scale = 1 / τ; with data.positives: views SupCon is SimCLR's NT-Xent.
    "supervised_contrastive": lambda o: SupervisedContrastiveLoss(scale=o.scale, distance=o.distance,
                                                                  cross_replica=o.cross_replica),
    "am_softmax": lambda o: AMSoftmaxLoss(scale=o.scale, margin=o.margin),
}
if set(LOSS_BUILDERS) != set(LOSS_TRAITS):
    raise ImportError(f"reprlearn.losses.registry builds {sorted(LOSS_BUILDERS)} but reprlearn.config.losses names "
                      f"{sorted(LOSS_TRAITS)}; every config loss name needs both")


def make_loss(name: str, margin: float, distance: str = "L2", soft: bool = False, cross_replica: bool = True,
              scale: float = 30.0) -> keras.losses.Loss:
    """The Keras loss a config names; ValueError naming the loss for an unknown name."""
    if name not in LOSS_BUILDERS:
        raise ValueError(f"loss name must be one of {list(LOSS_BUILDERS)}. Received: name={name!r}")
    return LOSS_BUILDERS[name](LossOptions(margin, distance, soft, cross_replica, scale))
