"""Metric-learning losses: each a function and a registered `keras.losses.Loss` class."""

from reprlearn.losses.contrastive import (ContrastiveLoss, contrastive_loss, in_batch_contrastive_loss)

__all__ = ["ContrastiveLoss", "contrastive_loss", "in_batch_contrastive_loss"]
