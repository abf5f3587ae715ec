"""Small registered Keras layers (no `Lambda`, so `.keras` files reload)."""

from reprlearn.layers.distance import PairDistance
from reprlearn.layers.channels import RepeatChannels

__all__ = ["PairDistance", "RepeatChannels"]
