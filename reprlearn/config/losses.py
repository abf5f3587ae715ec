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
    """A config loss name's batch kind and the `loss.*` options it accepts."""
    batch: str                     # "pk": P×K batches; "pairs": a Siamese model on pairs
    distances: tuple[str, ...]     # allowed `loss.distance` values (the ranking metric of the run)
    soft: bool = False             # accepts `loss.soft`
    classifier: bool = False       # trains the tower through a CosineClassifier head on dense class ids


LOSS_TRAITS: dict[str, LossTraits] = {
    "contrastive": LossTraits("pk", METRICS),               # contrastive loss over every pair of a P×K batch
    "pair_contrastive": LossTraits("pairs", METRICS),       # contrastive loss on a Siamese model fed balanced pairs
    "triplet_semihard": LossTraits("pk", METRICS),          # FaceNet semi-hard negatives
    "triplet_hard": LossTraits("pk", METRICS, soft=True),   # hardest positive and negative per anchor
    "triplet_batch_all": LossTraits("pk", METRICS),         # every triplet, averaged over the active ones
    "lifted_struct": LossTraits("pk", ("L2",)),             # lifted structured loss, defined on L2 distances
    "supervised_contrastive": LossTraits("pk", METRICS),    # SupCon (NT-Xent with data.positives: views)
    "am_softmax": LossTraits("pk", METRICS, classifier=True),  # cosine class weights with an additive margin
}
# The metric losses mined in P×K batches (what `reprlearn tune` searches).
IN_BATCH_LOSSES = tuple(name for name, traits in LOSS_TRAITS.items() if traits.batch == "pk" and not traits.classifier)
