"""How each config loss name is built: the Keras loss behind every name of `reprlearn.config.losses`.

The names and what each accepts live in `reprlearn.config.losses` (`LOSS_TRAITS`), which config
validation reads without model code; this module adds how each is built.

Example:
    loss = make_loss("triplet_semihard", margin=0.2)
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import keras

from reprlearn.config.losses import LOSS_TRAITS
from reprlearn.losses import (
    AMSoftmaxLoss,
    ArcFaceLoss,
    CircleLoss,
    ContrastiveLoss,
    CrossViewSoftMarginTripletLoss,
    InBatchContrastiveLoss,
    LiftedStructLoss,
    MultiSimilarityLoss,
    MultiSimilarityMiner,
    NTXentLoss,
    ProxyAnchorLoss,
    SupervisedContrastiveLoss,
    SymmetricInfoNCELoss,
    TripletLoss,
)


class LossOptions(NamedTuple):
    """The `loss.*` values a factory may read; each loss uses the ones it accepts (None: the loss's default)."""
    margin: float = 0.5
    distance: str = "L2"
    soft: bool = False
    cross_replica: bool = True
    scale: float = 30.0
    miner: str = "none"
    epsilon: float = 0.1
    alpha: Optional[float] = None
    beta: Optional[float] = None
    base: Optional[float] = None
    gamma: Optional[float] = None
    temperature: Optional[float] = None


def _pair_miner(o: LossOptions):
    return MultiSimilarityMiner(o.epsilon) if o.miner == "multi_similarity" else None


LOSS_BUILDERS: dict[str, Callable[[LossOptions], keras.losses.Loss]] = {
    "contrastive": lambda o: InBatchContrastiveLoss(margin=o.margin, distance=o.distance,
                                                    cross_replica=o.cross_replica, pair_miner=_pair_miner(o)),
    "pair_contrastive": lambda o: ContrastiveLoss(margin=o.margin),
    "triplet_semihard": lambda o: TripletLoss("semi-hard", o.margin, o.distance, cross_replica=o.cross_replica),
    "triplet_hard": lambda o: TripletLoss("batch-hard", o.margin, o.distance, soft=o.soft,
                                          cross_replica=o.cross_replica),
    "triplet_batch_all": lambda o: TripletLoss("batch-all", o.margin, o.distance, active_only=True,
                                               cross_replica=o.cross_replica),
    "lifted_struct": lambda o: LiftedStructLoss(margin=o.margin, cross_replica=o.cross_replica),
    # loss.scale = 1 / τ; with data.positives: views SupCon is SimCLR's NT-Xent.
    "supervised_contrastive": lambda o: SupervisedContrastiveLoss(scale=o.scale, distance=o.distance,
                                                                  cross_replica=o.cross_replica,
                                                                  pair_miner=_pair_miner(o)),
    "am_softmax": lambda o: AMSoftmaxLoss(scale=o.scale, margin=o.margin),
    "multi_similarity": lambda o: MultiSimilarityLoss(alpha=o.alpha, beta=o.beta, base=o.base, distance=o.distance,
                                                      cross_replica=o.cross_replica, pair_miner=_pair_miner(o)),
    "circle": lambda o: CircleLoss(m=o.margin, gamma=o.gamma, cross_replica=o.cross_replica,
                                   pair_miner=_pair_miner(o)),
    "ntxent": lambda o: NTXentLoss(temperature=o.temperature, distance=o.distance, cross_replica=o.cross_replica,
                                   pair_miner=_pair_miner(o)),
    "proxy_anchor": lambda o: ProxyAnchorLoss(margin=o.margin, alpha=o.alpha, cross_replica=o.cross_replica),
    "arcface": lambda o: ArcFaceLoss(scale=o.scale, margin=o.margin),
    "soft_margin_triplet": lambda o: CrossViewSoftMarginTripletLoss(alpha=o.alpha, distance=o.distance,
                                                                    cross_replica=o.cross_replica),
    "info_nce": lambda o: SymmetricInfoNCELoss(temperature=o.temperature, cross_replica=o.cross_replica),
}
if set(LOSS_BUILDERS) != set(LOSS_TRAITS):
    raise ImportError(f"reprlearn.losses.registry builds {sorted(LOSS_BUILDERS)} but reprlearn.config.losses names "
                      f"{sorted(LOSS_TRAITS)}; every config loss name needs both")


def make_loss(name: str, margin: float | None = None, **options) -> keras.losses.Loss:
    """The Keras loss a config names, from `loss.*` values (`LossOptions`); the keys left out or None take the loss's
    own defaults. ValueError naming the loss for an unknown name."""
    if name not in LOSS_BUILDERS:
        raise ValueError(f"loss name must be one of {list(LOSS_BUILDERS)}. Received: name={name!r}")
    defaults = {key: value for key, value in LOSS_TRAITS[name].defaults.items() if key in LossOptions._fields}
    given = {key: value for key, value in {"margin": margin, **options}.items() if value is not None}
    return LOSS_BUILDERS[name](LossOptions(**{**defaults, **given}))


def config_loss(loss_config) -> keras.losses.Loss:
    """The Keras loss of a config's loss section (`cfg.loss`)."""
    return make_loss(loss_config.name, **{key: getattr(loss_config, key) for key in LossOptions._fields})
