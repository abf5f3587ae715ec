"""Data: offline loaders, evaluation protocols and tf.data training pipelines."""

from reprlearn.data.imageset import ImageSet, check_images, check_labels, flat_pixels, make_imageset
from reprlearn.data.loaders import DatasetNotFoundError, load_dataset, load_spec, read_idx
from reprlearn.data.protocols import Splits, make_splits, splits_for, stratified_split

__all__ = ["ImageSet", "check_images", "check_labels", "flat_pixels", "make_imageset", "DatasetNotFoundError",
           "load_dataset", "load_spec", "read_idx", "Splits", "make_splits", "splits_for", "stratified_split"]
