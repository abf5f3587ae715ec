"""Small registered Keras layers (no `Lambda`, so `.keras` files reload)."""

from reprlearn.layers.channels import RepeatChannels
from reprlearn.layers.distance import PairDistance
from reprlearn.layers.lifted import LiftedStructLossLayer

__all__ = ["LiftedStructLossLayer", "PairDistance", "RepeatChannels"]
