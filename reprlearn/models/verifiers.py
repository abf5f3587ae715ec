"""Learned verifiers: pair models that output the probability that two images show the same class.

Two architectures, the learned designs of the course notes (design 1c, a metric embedding with a
distance threshold, is an ordinary embedding run):

    siamese_head   one tower applied to both images (one set of variables, tied weights), then a small
                   MLP on [|f(a) − f(b)|, f(a) ⊙ f(b)] and a sigmoid: symmetric in a and b. With the tower
                   frozen (design 1a) only the head trains; trainable, it trains end to end (design 1b).
    two_channel    a and b stacked on the channel axis into one network (design 2): it compares pixels
                   from the first layer on, and is not symmetric in a and b.

Example:
    verifier = siamese_head_model(conv_tower((28, 28, 1)), hidden=64)
    verifier.compile("adam", loss="binary_crossentropy")   # targets: 1 for a same-class pair
"""

from __future__ import annotations

import dataclasses

import keras

from reprlearn.config.schema import VERIFIERS
from reprlearn.errors import ConfigError
from reprlearn.layers.pair_features import PairFeatures
from reprlearn.models.towers import build_tower

OUTPUT_LAYER = "match_probability"
# What a verifier run ranks pairs by (its record's `metric`): lower is a better match, like a distance.
VERIFIER_SCORE = "1 - match_probability"


def _match_head(x, hidden: int):
    x = keras.layers.Dense(int(hidden), activation="relu", name="verifier_hidden")(x)
    # float32 whatever the dtype policy: the probability (and the loss on it) stay float32.
    return keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYER, dtype="float32")(x)


def _pair_inputs(shape) -> tuple:
    return keras.Input(shape, name="images_a"), keras.Input(shape, name="images_b")


def siamese_head_model(tower: keras.Model, hidden: int = 64, name: str = "siamese_head") -> keras.Model:
    """`[images_a, images_b] -> [B, 1]` match probability: one shared tower, an MLP on the pair features.

    Args:
        tower: a single-input embedding model; both images go through this one object.
        hidden: width of the head's hidden ReLU layer.

    Returns:
        A Functional `keras.Model` with inputs `images_a`, `images_b`.
    """
    if not isinstance(tower, keras.Model) or len(tower.inputs) != 1:
        raise ConfigError(f"tower must be a single-input keras.Model. Received: tower={tower!r}")
    images_a, images_b = _pair_inputs(tuple(tower.inputs[0].shape[1:]))
    features = PairFeatures(name="pair_features")([tower(images_a), tower(images_b)])
    return keras.Model([images_a, images_b], _match_head(features, hidden), name=name)


def two_channel_model(network: keras.Model, hidden: int = 64, name: str = "two_channel") -> keras.Model:
    """`[images_a, images_b] -> [B, 1]` match probability from one network on the images stacked channel-wise.

    Args:
        network: a single-input model taking `(H, W, 2C)` images (e.g. `conv_tower((28, 28, 2), ...)`).
        hidden: width of the head's hidden ReLU layer.

    Returns:
        A Functional `keras.Model` with inputs `images_a`, `images_b` of shape `(H, W, C)`.
    """
    shape = tuple(network.inputs[0].shape[1:]) if isinstance(network, keras.Model) else ()
    if len(shape) != 3 or shape[-1] % 2:
        raise ConfigError(f"network must take images with an even number of channels (a's and b's). "
                         f"Received: network input shape {shape}")
    images_a, images_b = _pair_inputs(shape[:-1] + (shape[-1] // 2,))
    stacked = keras.layers.Concatenate(axis=-1, name="stack_channels")([images_a, images_b])
    return keras.Model([images_a, images_b], _match_head(network(stacked), hidden), name=name)


def build_verifier(model_cfg, image_shape, tower_name: str = "tower") -> tuple[keras.Model, keras.Model]:
    """`(verifier, network)` as a `ModelConfig` describes (`model.verifier`, `model.verifier_hidden`).

    `network` is the shared tower of a siamese head (the part `model.init_from` and `model.freeze` act on) or
    the two-channel network; its embedding layer is left unnormalised in the two-channel case, where it is only
    a hidden layer.
    """
    if model_cfg.verifier not in VERIFIERS:
        raise ConfigError(f"model.verifier must be one of {list(VERIFIERS)}. Received: model.verifier="
                         f"{model_cfg.verifier!r}")
    if model_cfg.verifier == "siamese_head":
        tower = build_tower(model_cfg, image_shape, name=tower_name)
        return siamese_head_model(tower, model_cfg.verifier_hidden), tower
    height, width, channels = image_shape
    network = build_tower(dataclasses.replace(model_cfg, l2_normalize=False), (height, width, 2 * channels),
                          name=tower_name)
    return two_channel_model(network, model_cfg.verifier_hidden), network
