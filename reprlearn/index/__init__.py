"""Galleries of enrolled embeddings and the exact search kernel they and the retrieval metrics share."""

from reprlearn.index.gallery import (
                                     BACKENDS,
                                     UNKNOWN,
                                     VOTES,
                                     Gallery,
                                     GalleryError,
                                     Identification,
                                     impostor_threshold,
                                     split_class_threshold,
)
from reprlearn.index.search import search_chunks

__all__ = ["BACKENDS", "UNKNOWN", "VOTES", "Gallery", "GalleryError", "Identification", "impostor_threshold",
           "search_chunks", "split_class_threshold"]
