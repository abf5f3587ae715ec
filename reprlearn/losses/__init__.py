"""Metric-learning losses: each a function and a registered `keras.losses.Loss` class.

The functions named after tensorflow-addons' (`contrastive_loss`, `triplet_semihard_loss`,
`triplet_hard_loss`, `lifted_struct_loss`) and the classes (`ContrastiveLoss`,
`TripletSemiHardLoss`, `TripletHardLoss`, `LiftedStructLoss`) take the same arguments.
`InBatchContrastiveLoss` is the contrastive loss over every pair of a P×K batch. Every in-batch loss
derives from `InBatchLoss`, which computes the distance matrix once per batch and keeps it for the
training metrics of the same step. `AMSoftmaxLoss` trains a tower through a `CosineClassifier` head;
`JointRepresentationSimilarity` is JRD's regulariser over several layers. `SupervisedContrastiveLoss` is
SupCon, and SimCLR's NT-Xent on batches of augmented views.

After triplet, pytorch-metric-learning's most used losses, with its numbers: `MultiSimilarityLoss` (and its
`MultiSimilarityMiner`, a pair miner any pair loss takes as `pair_miner=`), `CircleLoss`, `NTXentLoss` (one
term per positive pair), `ProxyAnchorLoss` (proxies: a `CosineClassifier`'s weights) and `ArcFaceLoss`
(sub-centre ArcFace with `CosineClassifier(sub_centers=k)`).

Across two views (two towers, matched pairs): `CrossViewSoftMarginTripletLoss` (CVM-Net / SAFA),
`SymmetricInfoNCELoss` (CLIP) and `TwoViewLoss`, which runs any in-batch loss above over both views.
"""

from reprlearn.losses.am_softmax import AMSoftmaxLoss, am_softmax_loss
from reprlearn.losses.arcface import ArcFaceLoss, arcface_loss
from reprlearn.losses.circle import CircleLoss, circle_loss
from reprlearn.losses.contrastive import (
                                          ContrastiveLoss,
                                          InBatchContrastiveLoss,
                                          contrastive_loss,
                                          in_batch_contrastive_loss,
)
from reprlearn.losses.cross_view import (
                                          CrossViewSoftMarginTripletLoss,
                                          SymmetricInfoNCELoss,
                                          TwoViewLoss,
                                          cross_view_soft_margin_triplet_loss,
                                          symmetric_info_nce_loss,
)
from reprlearn.losses.in_batch import BatchMemo, InBatchLoss
from reprlearn.losses.jrd import JointRepresentationSimilarity, joint_representation_similarity
from reprlearn.losses.lifted import LiftedStructLoss, lifted_struct_loss
from reprlearn.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from reprlearn.losses.ntxent import NTXentLoss, ntxent_loss
from reprlearn.losses.pair_miners import MultiSimilarityMiner, multi_similarity_miner
from reprlearn.losses.proxy_anchor import ProxyAnchorLoss, proxy_anchor_loss
from reprlearn.losses.supervised_contrastive import SupervisedContrastiveLoss, supervised_contrastive_loss
from reprlearn.losses.triplet import (
                                          TripletHardLoss,
                                          TripletLoss,
                                          TripletSemiHardLoss,
                                          triplet_hard_loss,
                                          triplet_loss,
                                          triplet_semihard_loss,
)

__all__ = ["AMSoftmaxLoss", "ArcFaceLoss", "BatchMemo", "CircleLoss", "ContrastiveLoss",
           "CrossViewSoftMarginTripletLoss", "InBatchContrastiveLoss", "InBatchLoss", "JointRepresentationSimilarity",
           "LiftedStructLoss", "MultiSimilarityLoss", "MultiSimilarityMiner", "NTXentLoss", "ProxyAnchorLoss",
           "SupervisedContrastiveLoss", "SymmetricInfoNCELoss", "TripletHardLoss", "TripletLoss",
           "TripletSemiHardLoss", "TwoViewLoss", "am_softmax_loss", "arcface_loss", "circle_loss", "contrastive_loss",
           "cross_view_soft_margin_triplet_loss", "in_batch_contrastive_loss", "joint_representation_similarity",
           "lifted_struct_loss", "multi_similarity_loss", "multi_similarity_miner", "ntxent_loss", "proxy_anchor_loss",
           "supervised_contrastive_loss", "symmetric_info_nce_loss", "triplet_hard_loss", "triplet_loss",
           "triplet_semihard_loss"]
