"""Metric-learning losses: each a function and a registered `keras.losses.Loss` class.

The functions named after tensorflow-addons' (`contrastive_loss`, `triplet_semihard_loss`,
`triplet_hard_loss`, `lifted_struct_loss`) and the classes (`ContrastiveLoss`,
`TripletSemiHardLoss`, `TripletHardLoss`, `LiftedStructLoss`) take the same arguments.
`InBatchContrastiveLoss` is the contrastive loss over every pair of a P×K batch.
"""

from reprlearn.losses.contrastive import (ContrastiveLoss, InBatchContrastiveLoss, contrastive_loss,
                                          in_batch_contrastive_loss)
from reprlearn.losses.lifted import LiftedStructLoss, lifted_struct_loss
from reprlearn.losses.triplet import (TripletHardLoss, TripletLoss, TripletSemiHardLoss, triplet_hard_loss,
                                      triplet_loss, triplet_semihard_loss)

__all__ = ["ContrastiveLoss", "InBatchContrastiveLoss", "LiftedStructLoss", "TripletHardLoss", "TripletLoss", "TripletSemiHardLoss",
           "contrastive_loss", "in_batch_contrastive_loss", "lifted_struct_loss", "triplet_hard_loss",
           "triplet_loss", "triplet_semihard_loss"]
