"""reprlearn: representation learning for Keras 3 (metric learning, autoencoders, evaluation, export)."""

__version__ = "0.1.0"
