"""Model builders: embedding towers and the Siamese pair model."""

from reprlearn.models.towers import backbone_tower, build_tower, conv_tower, mlp_tower
from reprlearn.models.siamese import siamese_pair_model

__all__ = ["backbone_tower", "build_tower", "conv_tower", "mlp_tower", "siamese_pair_model"]
