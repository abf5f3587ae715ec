"""The Siamese pair model: two inputs, one shared tower, a distance head."""

from __future__ import annotations

import keras

from reprlearn.layers.distance import PairDistance


def siamese_pair_model(tower: keras.Model, distance: str = "L2", name: str = "siamese") -> keras.Model:
    """Wraps a tower into a pair model `[images_a, images_b] -> distance [B]`.

    Both inputs go through the **same** tower object, so both branches share every weight.
    Train it with `ContrastiveLoss()` (pair form, y = 1 for a match).

    Example:
        pair = siamese_pair_model(conv_tower((28, 28, 1)), distance="L2")
        pair.compile("adam", loss=ContrastiveLoss(margin=1.0))

    Args:
        tower: a single-input embedding model.
        distance: `"L2"`, `"squared-L2"` or `"angular"`.

    Returns:
        A Functional `keras.Model` with inputs `images_a`, `images_b` and output `distance`.
    """
    if not isinstance(tower, keras.Model) or len(tower.inputs) != 1:
        raise ValueError(f"tower must be a single-input keras.Model. Received: tower={tower!r}")
    shape = tuple(tower.inputs[0].shape[1:])
    images_a = keras.Input(shape, name="images_a")
    images_b = keras.Input(shape, name="images_b")
    dist = PairDistance(distance, name="distance")([tower(images_a), tower(images_b)])
    return keras.Model([images_a, images_b], dist, name=name)
