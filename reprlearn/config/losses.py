"""What each `loss.name` a config can use accepts: its batches, distances and options.

This table is the one list of loss names. Config validation reads it here, without importing
any model code; `reprlearn.losses.registry` maps the same names to the Keras losses that build
them and refuses to import if the two disagree.

Example:
    LOSS_TRAITS["triplet_semihard"].batch   # "pk": P classes × K examples per batch
"""

from __future__ import annotations

from typing import NamedTuple

from reprlearn.ops.distances import METRICS


class LossTraits(NamedTuple):
    """A config loss name's batch kind, the `loss.*` options it accepts, and its own defaults."""
    batch: str                     # "pk": P×K batches; "pairs": a Siamese model on pairs; "views": matched pairs of
                                   # two views (a two-tower model, model.kind: two_tower)
    distances: tuple[str, ...]     # allowed `loss.distance` values (the ranking metric of the run)
    soft: bool = False             # accepts `loss.soft`
    classifier: bool = False       # trains the tower through a CosineClassifier head on dense class ids
    pairs: bool = False            # scores pairs, so `loss.miner` may choose them
    # Values a config that names this loss gets for the keys it leaves out (pytorch-metric-learning's defaults
    # for the losses it has); the per-loss keys of `LOSS_OPTIONS` listed here are the ones the loss accepts.
    defaults: dict = {}
    # Which of the keys every loss section has (`SHARED_OPTIONS`) the loss reads; a config giving another one
    # a value of its own is refused (it would be recorded and ignored).
    reads: tuple[str, ...] = ("margin",)


LOSS_TRAITS: dict[str, LossTraits] = {
    "contrastive": LossTraits("pk", METRICS, pairs=True),   # contrastive loss over every pair of a P×K batch
    "pair_contrastive": LossTraits("pairs", METRICS),       # contrastive loss on a Siamese model fed balanced pairs
    "triplet_semihard": LossTraits("pk", METRICS),          # FaceNet semi-hard negatives
    "triplet_hard": LossTraits("pk", METRICS, soft=True),   # hardest positive and negative per anchor
    "triplet_batch_all": LossTraits("pk", METRICS),         # every triplet, averaged over the active ones
    "lifted_struct": LossTraits("pk", ("L2",)),             # lifted structured loss, defined on L2 distances
    "supervised_contrastive": LossTraits("pk", METRICS, pairs=True,  # SupCon (NT-Xent with data.positives: views)
                                         reads=("scale",)),
    "am_softmax": LossTraits("pk", METRICS, classifier=True,  # cosine class weights with an additive margin
                             reads=("margin", "scale")),
    # Multi-Similarity (Wang et al. 2019): alpha, beta and base are its α, β, λ.
    "multi_similarity": LossTraits("pk", METRICS, pairs=True, reads=(), defaults={
        "distance": "angular", "alpha": 2.0, "beta": 50.0, "base": 0.5}),
    # Circle loss (Sun et al. 2020) on cosine similarities: margin is its relaxation m, gamma its scale γ.
    "circle": LossTraits("pk", ("angular",), pairs=True, defaults={"distance": "angular", "margin": 0.4,
                                                                   "gamma": 80.0}),
    # NT-Xent (SimCLR): one term per positive pair, temperature τ.
    "ntxent": LossTraits("pk", METRICS, pairs=True, reads=(), defaults={"distance": "angular",
                                                                         "temperature": 0.07}),
    # Proxy-Anchor (Kim et al. 2020): margin δ, alpha α; the proxies train at proxy_learning_rate_factor × the rate.
    "proxy_anchor": LossTraits("pk", METRICS, classifier=True, defaults={
        "distance": "angular", "margin": 0.1, "alpha": 32.0, "proxy_learning_rate_factor": 100.0}),
    # ArcFace (Deng et al. 2019): margin in radians, scale s, sub_centers k per class.
    "arcface": LossTraits("pk", METRICS, classifier=True, reads=("margin", "scale"), defaults={
        "distance": "angular", "margin": 0.5, "scale": 64.0, "sub_centers": 1}),
    # Two towers on matched pairs (model.kind: two_tower): the weighted soft-margin triplet over every in-batch
    # negative in both directions (CVM-Net, SAFA), alpha its α; CLIP's symmetric InfoNCE, temperature its τ
    # (loss.learn_temperature: τ learnt, starting there). Any P×K in-batch loss above also trains two towers, over
    # both views' embeddings labelled by pair.
    "soft_margin_triplet": LossTraits("views", METRICS, reads=(), defaults={"alpha": 10.0}),
    "info_nce": LossTraits("views", METRICS, reads=(), defaults={"temperature": 0.07}),
}
# Keys every loss section has, each read by the losses whose traits list it in `reads`.
SHARED_OPTIONS = ("margin", "scale")
# Keys of the loss section that only some losses take (those listing the key in their defaults).
LOSS_OPTIONS = ("alpha", "beta", "base", "gamma", "temperature", "sub_centers", "proxy_learning_rate_factor")
PAIR_MINERS = ("none", "multi_similarity")
# The metric losses mined in P×K batches.
IN_BATCH_LOSSES = tuple(name for name, traits in LOSS_TRAITS.items() if traits.batch == "pk" and not traits.classifier)
# Every loss trained on P×K batches, classifier losses included (what `reprlearn tune` searches).
# The P×K losses that score each anchor's row of pairs: these take a cross-batch memory (train.memory_size).
MEMORY_LOSSES = tuple(name for name, traits in LOSS_TRAITS.items() if traits.batch == "pk" and traits.pairs)
PK_LOSSES = tuple(name for name, traits in LOSS_TRAITS.items() if traits.batch == "pk")
# What trains a two-tower model: the cross-view losses, and the in-batch metric losses over both views.
TWO_TOWER_LOSSES = tuple(name for name, traits in LOSS_TRAITS.items() if traits.batch == "views") + IN_BATCH_LOSSES


def loss_option(loss, key: str):
    """A `loss.<key>` value as the loss uses it: the section's own, or the loss's default where it is None."""
    value = getattr(loss, key)
    return LOSS_TRAITS[loss.name].defaults.get(key) if value is None else value
