import numpy as np
import pytest
import keras

from reprlearn.layers import PairDistance, RepeatChannels
from reprlearn.losses import ContrastiveLoss
from reprlearn.models import backbone_tower, conv_tower, mlp_tower, siamese_pair_model

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 1)).astype(np.float32)


def test_towers_embed_to_unit_vectors():
    for tower in (mlp_tower((16, 16, 1), hidden=[32], embedding_dim=8),
                  conv_tower((16, 16, 1), filters=[4, 8], dense=16, embedding_dim=8, batch_norm=True, dropout=0.1)):
        out = tower.predict(IMAGES, verbose=0)
        assert out.shape == (6, 8)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    raw = mlp_tower((16, 16, 1), hidden=[], embedding_dim=3, l2_normalize=False).predict(IMAGES, verbose=0)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_conv_tower_depth_follows_filters():
    tower = conv_tower((16, 16, 1), filters=[4, 8, 16], dense=0)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in tower.layers) == 3
    with pytest.raises(ValueError, match="too small for 3 2x2 poolings"):
        conv_tower((4, 4, 1), filters=[4, 8, 16])
    with pytest.raises(ValueError, match="embedding_dim=0"):
        conv_tower((16, 16, 1), embedding_dim=0)
    with pytest.raises(ValueError, match=r"input_shape=\(16, 16\)"):
        mlp_tower((16, 16))


def test_siamese_branches_share_every_weight():
    tower = conv_tower((16, 16, 1), filters=[4], dense=8, embedding_dim=4)
    pair = siamese_pair_model(tower)
    towers = [layer for layer in pair.layers if isinstance(layer, keras.Model)]
    assert towers == [tower]  # one tower object, called on both inputs
    assert len(pair.trainable_weights) == len(tower.trainable_weights)
    assert all(a is b for a, b in zip(pair.trainable_weights, tower.trainable_weights))
    d = pair.predict([IMAGES, IMAGES[::-1]], verbose=0)
    e = tower.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(d, np.linalg.norm(e - e[::-1], axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pair.predict([IMAGES, IMAGES], verbose=0), 0.0, atol=1e-6)


def test_siamese_trains_and_round_trips_through_keras_file(tmp_path):
    tower = mlp_tower((16, 16, 1), hidden=[16], embedding_dim=4)
    pair = siamese_pair_model(tower, distance="angular")
    pair.compile("adam", loss=ContrastiveLoss(margin=0.5))
    y = np.array([1, 0, 1, 0, 1, 0], np.float32)
    history = pair.fit([IMAGES, IMAGES[::-1]], y, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    pair.save(tmp_path / "pair.keras")
    again = keras.saving.load_model(tmp_path / "pair.keras")
    np.testing.assert_array_equal(again.predict([IMAGES, IMAGES[::-1]], verbose=0),
                                  pair.predict([IMAGES, IMAGES[::-1]], verbose=0))


def test_layers_validate_arguments():
    with pytest.raises(ValueError, match="metric='manhattan'"):
        PairDistance("manhattan")
    with pytest.raises(ValueError, match="channels=0"):
        RepeatChannels(0)


def test_backbone_tower_frozen_and_fine_tuned(tmp_path):
    # Random weights train whole by default (a frozen random network computes nothing useful).
    random = backbone_tower((16, 16, 1), "MobileNetV2", image_size=32, embedding_dim=8)
    assert random.predict(IMAGES[:2], verbose=0).shape == (2, 8)
    base = [layer for layer in random.layers if isinstance(layer, keras.Model)][0]
    assert base.trainable and len(random.trainable_weights) > 100
    layer_name = base.layers[-10].name
    tuned = backbone_tower((16, 16, 1), "MobileNetV2", image_size=32, fine_tune_from=layer_name)
    tuned_base = [layer for layer in tuned.layers if isinstance(layer, keras.Model)][0]
    assert tuned_base.get_layer(layer_name).trainable and not tuned_base.layers[1].trainable
    # Local weights only: save the base, rebuild from the file, same features.
    base.save_weights(tmp_path / "base.weights.h5")
    rebuilt = backbone_tower((16, 16, 1), "MobileNetV2", weights=str(tmp_path / "base.weights.h5"),
                             image_size=32, embedding_dim=8)
    rebuilt_base = [layer for layer in rebuilt.layers if isinstance(layer, keras.Model)][0]
    assert not rebuilt_base.trainable and len(rebuilt.trainable_weights) == 2  # pretrained: only the head trains
    for a, b in zip(base.weights, rebuilt_base.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="weights='nope.h5'"):
        backbone_tower((16, 16, 1), weights="nope.h5")
    with pytest.raises(ValueError, match="fine_tune_from='no_such_layer'"):
        backbone_tower((16, 16, 1), image_size=32, fine_tune_from="no_such_layer")
    with pytest.raises(ValueError, match=r"input_shape=\(16, 16, 2\)"):
        backbone_tower((16, 16, 2))
