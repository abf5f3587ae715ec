"""Galleries of enrolled embeddings and the exact search kernel they and the retrieval metrics share."""

from reprlearn.index.gallery import (BACKENDS, UNKNOWN, VOTES, Gallery, GalleryError, Identification,
                                     split_class_threshold)
from reprlearn.index.search import search_chunks

__all__ = ["BACKENDS", "UNKNOWN", "VOTES", "Gallery", "GalleryError", "Identification", "search_chunks",
           "split_class_threshold"]
