"""Metric-learning losses: each a function and a registered `keras.losses.Loss` class.

The functions named after tensorflow-addons' (`contrastive_loss`, `triplet_semihard_loss`,
`triplet_hard_loss`, `lifted_struct_loss`) and the classes (`ContrastiveLoss`,
`TripletSemiHardLoss`, `TripletHardLoss`, `LiftedStructLoss`) take the same arguments.
`InBatchContrastiveLoss` is the contrastive loss over every pair of a P×K batch. Every in-batch loss
derives from `InBatchLoss`, which computes the distance matrix once per batch and keeps it for the
training metrics of the same step. `AMSoftmaxLoss` trains a tower through a `CosineClassifier` head;
`JointRepresentationSimilarity` is JRD's regulariser over several layers. `SupervisedContrastiveLoss` is
SupCon, and SimCLR's NT-Xent on batches of augmented views.
"""

from reprlearn.losses.am_softmax import AMSoftmaxLoss, am_softmax_loss
from reprlearn.losses.contrastive import (
                                          ContrastiveLoss,
                                          InBatchContrastiveLoss,
                                          contrastive_loss,
                                          in_batch_contrastive_loss,
)
from reprlearn.losses.in_batch import BatchMemo, InBatchLoss
from reprlearn.losses.jrd import JointRepresentationSimilarity, joint_representation_similarity
from reprlearn.losses.lifted import LiftedStructLoss, lifted_struct_loss
from reprlearn.losses.supervised_contrastive import SupervisedContrastiveLoss, supervised_contrastive_loss
from reprlearn.losses.triplet import (
                                          TripletHardLoss,
                                          TripletLoss,
                                          TripletSemiHardLoss,
                                          triplet_hard_loss,
                                          triplet_loss,
                                          triplet_semihard_loss,
)

__all__ = ["AMSoftmaxLoss", "BatchMemo", "ContrastiveLoss", "InBatchContrastiveLoss", "InBatchLoss",
           "JointRepresentationSimilarity", "LiftedStructLoss", "SupervisedContrastiveLoss", "TripletHardLoss",
           "TripletLoss", "TripletSemiHardLoss", "am_softmax_loss", "contrastive_loss", "in_batch_contrastive_loss",
           "joint_representation_similarity", "lifted_struct_loss", "supervised_contrastive_loss",
           "triplet_hard_loss", "triplet_loss", "triplet_semihard_loss"]
