"""Small registered Keras layers (no `Lambda`, so `.keras` files reload)."""

from reprlearn.layers.channels import RepeatChannels
from reprlearn.layers.cosine import CosineClassifier
from reprlearn.layers.distance import PairDistance
from reprlearn.layers.lifted import LiftedStructLossLayer
from reprlearn.layers.orientations import OrientationHistogram
from reprlearn.layers.pair_features import PairFeatures
from reprlearn.layers.pooling import GeneralizedMeanPooling, PixelAffine
from reprlearn.layers.power import SignedPower
from reprlearn.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D

__all__ = ["CosineClassifier", "GeneralizedMeanPooling", "LiftedStructLossLayer", "MaxPoolingWithArgmax2D",
           "MaxUnpooling2D", "OrientationHistogram", "PairDistance", "PairFeatures", "PixelAffine", "RepeatChannels",
           "SignedPower"]
