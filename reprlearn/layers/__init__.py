"""Small registered Keras layers (no `Lambda`, so `.keras` files reload)."""

from reprlearn.layers.channels import Luma, RepeatChannels
from reprlearn.layers.cosine import CosineClassifier
from reprlearn.layers.distance import PairDistance
from reprlearn.layers.lifted import LiftedStructLossLayer
from reprlearn.layers.orientations import OrientationHistogram
from reprlearn.layers.pair_features import PairFeatures
from reprlearn.layers.polar import CircularPadding2D, PolarTransform, WidthPooling
from reprlearn.layers.pooling import GeneralizedMeanPooling, PixelAffine
from reprlearn.layers.power import SignedPower
from reprlearn.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D

__all__ = ["CircularPadding2D", "CosineClassifier", "GeneralizedMeanPooling", "LiftedStructLossLayer", "Luma",
           "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "OrientationHistogram", "PairDistance", "PairFeatures",
           "PixelAffine", "PolarTransform", "RepeatChannels", "SignedPower", "WidthPooling"]
