"""Max-unpooling against a NumPy loop, autoencoder weight sharing, the linear AE against PCA, and the VAE."""

import numpy as np
import pytest
import tensorflow as tf
import keras
from sklearn.decomposition import PCA

from reprlearn.data import load_dataset
from reprlearn.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from reprlearn.models import VAE, conv_autoencoder, dense_autoencoder


def loop_pool_and_unpool(x, output_size):
    """2×2 SAME max-pool with argmax, then scatter back, one window at a time."""
    batch, height, width, channels = x.shape
    pooled_h, pooled_w = -(-height // 2), -(-width // 2)
    pooled = np.zeros((batch, pooled_h, pooled_w, channels), x.dtype)
    index = np.zeros(pooled.shape, np.int64)
    restored = np.zeros((batch, *output_size, channels), x.dtype)
    for b in range(batch):
        for c in range(channels):
            for i in range(pooled_h):
                for j in range(pooled_w):
                    window = [(y, xx) for y in range(2 * i, min(2 * i + 2, height))
                              for xx in range(2 * j, min(2 * j + 2, width))]
                    y, xx = max(window, key=lambda p: x[b, p[0], p[1], c])
                    pooled[b, i, j, c] = x[b, y, xx, c]
                    index[b, i, j, c] = (y * width + xx) * channels + c
                    restored[b, y, xx, c] += x[b, y, xx, c]
    return pooled, index, restored


@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
def test_pool_and_unpool_match_the_loop(size):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    pooled, index = MaxPoolingWithArgmax2D(2)(x)
    want_pooled, want_index, want_restored = loop_pool_and_unpool(x, size)
    np.testing.assert_array_equal(pooled.numpy(), want_pooled)
    np.testing.assert_array_equal(index.numpy(), want_index)
    restored = MaxUnpooling2D(2, output_size=size)(pooled, index)
    np.testing.assert_array_equal(restored.numpy(), want_restored)
    np.testing.assert_array_equal(MaxUnpooling2D(2, output_size=size)([pooled, index]).numpy(), want_restored)


def test_default_output_size_follows_addons():
    x = np.random.default_rng(1).normal(size=(1, 4, 6, 2)).astype(np.float32)
    pooled, index = MaxPoolingWithArgmax2D(2)(x)
    assert MaxUnpooling2D(2)(pooled, index).shape == (1, 4, 6, 2)


def test_unpool_gradient_matches_finite_differences():
    x = np.random.default_rng(2).normal(size=(2, 5, 5, 2))
    pooled, index = MaxPoolingWithArgmax2D(2)(tf.constant(x, tf.float32))
    layer = MaxUnpooling2D(2, output_size=(5, 5), dtype="float64")
    weights = tf.constant(np.random.default_rng(3).normal(size=(2, 5, 5, 2)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda p: tf.reduce_sum(layer(p, index) * weights), [tf.cast(pooled, tf.float64)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_unpooling_model_survives_save_and_load(tmp_path):
    images = keras.Input((5, 7, 3))
    pooled, index = MaxPoolingWithArgmax2D(2)(images)
    model = keras.Model(images, MaxUnpooling2D(2, output_size=(5, 7))(pooled, index))
    model.save(tmp_path / "unpool.keras")
    x = np.random.default_rng(4).normal(size=(2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "unpool.keras").predict(x, verbose=0),
                                  model.predict(x, verbose=0))


def test_bad_layer_arguments_name_the_value():
    with pytest.raises(ValueError, match="pool_size=0"):
        MaxUnpooling2D(pool_size=0)
    with pytest.raises(ValueError, match="padding='full'"):
        MaxPoolingWithArgmax2D(padding="full")


@pytest.mark.parametrize("decoder", ["unpool", "transpose", "upsample"])
def test_conv_autoencoder_parts_share_weights(decoder):
    shape = (8, 8, 1) if decoder != "unpool" else (7, 9, 1)  # unpooling inverts odd sizes too
    parts = conv_autoencoder(shape, filters=[4, 8], code_dim=5, decoder=decoder)
    x = np.random.default_rng(5).integers(0, 256, (3, *shape)).astype(np.float32)
    code = parts.encoder.predict(x, verbose=0)
    assert code.shape == (3, 5)
    inputs = [code, *parts.pooling_indices.predict(x, verbose=0)] if decoder == "unpool" else code
    np.testing.assert_allclose(parts.decoder.predict(inputs, verbose=0), parts.autoencoder.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert {id(w) for w in parts.encoder.weights} <= {id(w) for w in parts.autoencoder.weights}


def test_sizes_the_pooling_cannot_invert_are_rejected():
    with pytest.raises(ValueError, match=r"input_shape=\(27, 27, 1\)"):
        conv_autoencoder((27, 27, 1), filters=[4, 8], decoder="transpose")
    with pytest.raises(ValueError, match=r"input_shape=\(3, 3, 1\)"):
        conv_autoencoder((3, 3, 1), filters=[4, 8])
    with pytest.raises(ValueError, match="latent_dim=0"):
        VAE((8, 8, 1), latent_dim=0)
    with pytest.raises(ValueError, match=r"input_shape=\(27, 28, 1\)"):
        VAE((27, 28, 1), filters=[8, 8])


@pytest.mark.slow
def test_linear_autoencoder_matches_pca_on_digits():
    images = load_dataset("digits")["all"].images
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    pca = PCA(n_components=16).fit(x)
    pca_mse = float(np.mean((pca.inverse_transform(pca.transform(x)) - x) ** 2))
    parts = dense_autoencoder(images.shape[1:], code_dim=16, linear=True)
    parts.autoencoder.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    keras.utils.set_random_seed(0)
    parts.autoencoder.fit(images, images / 255.0, batch_size=len(images), epochs=1500, verbose=0)
    parts.autoencoder.optimizer.learning_rate.assign(0.001)
    parts.autoencoder.fit(images, images / 255.0, batch_size=len(images), epochs=300, verbose=0)
    ae_mse = float(np.mean((parts.autoencoder.predict(images, verbose=0) - images / 255.0) ** 2))
    assert ae_mse <= 1.01 * pca_mse, (ae_mse, pca_mse)
    assert ae_mse >= 0.999 * pca_mse  # PCA is optimal: the AE can only tie


@pytest.fixture(scope="module")
def trained_vae():
    images = load_dataset("digits")["all"].images
    keras.utils.set_random_seed(0)
    vae = VAE(images.shape[1:], latent_dim=4, architecture="dense", hidden=[64])
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit(images[:1500], epochs=30, batch_size=100, verbose=0)
    return vae, images[1500:]


def test_importance_weighted_estimate_is_at_least_the_elbo(trained_vae):
    vae, test = trained_vae
    elbo = vae.log_likelihood(test[:40], k=1)
    iwae = vae.log_likelihood(test[:40], k=1000)
    assert iwae.mean() >= elbo.mean()
    reconstruction, kl = vae.elbo_terms(test[:40], seed=0)
    assert float(np.mean(reconstruction - kl)) == pytest.approx(float(elbo.mean()), rel=0.1)


def test_trained_vae_scores_images_above_noise_and_reloads(trained_vae, tmp_path):
    vae, test = trained_vae
    noise = np.random.default_rng(0).integers(0, 256, test[:40].shape).astype(np.uint8)
    assert vae.log_likelihood(test[:40], k=10).mean() > vae.log_likelihood(noise, k=10).mean() + 50
    assert vae.sample(5, seed=1).shape == (5, 8, 8, 1)
    mean, logvar = vae.encode(test[:3])
    assert mean.shape == logvar.shape == (3, 4)
    vae.save(tmp_path / "vae.keras")
    reloaded = keras.saving.load_model(tmp_path / "vae.keras")
    np.testing.assert_allclose(reloaded.reconstruct(test[:5]), vae.reconstruct(test[:5]), rtol=1e-5, atol=1e-6)
    assert reloaded.get_config()["latent_dim"] == 4


def _ae_config(train=None, **model):
    from reprlearn.config import config_from_dict
    return config_from_dict({"data": {"name": "digits"},
                             "model": {"tower": "conv", "filters": [8], "hidden": [32], **model},
                             "train": {"epochs": 2, "steps_per_epoch": 10, "batch_size": 64, **(train or {})},
                             "eval": {"grid_queries": 2, "grid_neighbours": 3}})


@pytest.mark.parametrize("model", [{"kind": "autoencoder", "code_dim": 8},
                                   {"kind": "vae", "code_dim": 2, "tower": "mlp"}], ids=lambda m: m["kind"])
def test_train_runs_label_free_configs_and_reports(tmp_path, model):
    import json
    from reprlearn.training import run_training

    report = run_training(_ae_config(**model), tmp_path, verbose=0)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["metrics"]["reconstruction"]["mse"] > 0 and saved["metrics"]["reconstruction"]["pca_mse"] > 0
    assert {"test", "pca", "baseline_raw"} <= set(saved["metrics"])
    assert 0.0 < saved["metrics"]["test"]["map_at_r"] <= 1.0
    encoder = keras.saving.load_model(tmp_path / "model.keras")
    assert encoder.output_shape == (None, model["code_dim"])
    figures = set(report["figures"].values())
    assert {"reconstructions.png", "retrieval_grid.png", "training.png"} <= figures
    assert (tmp_path / ("vae.keras" if model["kind"] == "vae" else "autoencoder.keras")).is_file()
    if model["kind"] == "vae":
        assert {"samples.png", "traversal.png"} <= figures
    for name in figures:
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("model", [{"kind": "autoencoder", "code_dim": 8},
                                   {"kind": "vae", "code_dim": 4, "tower": "mlp"}], ids=lambda m: m["kind"])
def test_label_free_runs_improve_their_own_objective_over_the_untrained_model(tmp_path, model):
    from reprlearn.data import splits_for
    from reprlearn.models import VAE
    from reprlearn.training import run_training
    from reprlearn.training.autoencoder import build_autoencoder, reconstruct

    cfg = _ae_config(train={"epochs": 3, "steps_per_epoch": 60, "learning_rate": 0.003}, **model)
    test = splits_for(cfg.data).test
    keras.utils.set_random_seed(cfg.train.seed)
    untrained = build_autoencoder(cfg, test.images.shape[1:])
    metrics = run_training(cfg, tmp_path, verbose=0)["metrics"]
    flat = test.images.reshape(len(test), -1) / 255.0
    untrained_mse = float(np.mean((reconstruct(untrained, test.images).reshape(len(test), -1) - flat) ** 2))
    assert metrics["reconstruction"]["mse"] < 0.7 * untrained_mse
    if isinstance(untrained, VAE):
        untrained_elbo = float(np.mean(untrained.log_likelihood(test.images, k=1)))
        assert metrics["likelihood"]["elbo_nats_per_image"] > untrained_elbo + 0.25 * abs(untrained_elbo)


def _numpy_elbo(vae, images, samples: int, seed: int) -> np.ndarray:
    """E_q[log p(x|z)] − KL(q(z|x) || N(0, I)) per image, from the encoder and decoder outputs, in NumPy."""
    mean, logvar = (np.asarray(t, np.float64) for t in vae.encoder.predict(images, verbose=0))
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    log_px = np.zeros(len(images))
    for _ in range(samples):
        z = mean + np.exp(0.5 * logvar) * rng.normal(size=mean.shape)
        logits = np.asarray(vae.decoder.predict(z.astype(np.float32), verbose=0), np.float64).reshape(len(x), -1)
        p = 1.0 / (1.0 + np.exp(-logits))
        if vae.likelihood == "bernoulli":
            log_px += np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1)
        else:
            scale = float(np.exp(np.asarray(vae.log_scale)))
            log_px += np.sum(-0.5 * ((x - p) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), axis=1)
    kl = 0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=1)
    return log_px / samples - kl


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_equals_an_independent_numpy_computation(likelihood):
    from sklearn.datasets import load_digits
    from reprlearn.models import VAE

    keras.utils.set_random_seed(2)
    images = (load_digits().images[:150, :, :, None] * 255.0 / 16.0).astype(np.uint8)
    vae = VAE((8, 8, 1), latent_dim=3, architecture="dense", hidden=[32], likelihood=likelihood)
    vae.compile(optimizer=keras.optimizers.Adam(3e-3))
    vae.fit(images, epochs=3, batch_size=32, verbose=0)
    ours = vae.log_likelihood(images, k=1, seed=0)  # one sample per image: unbiased but noisy per image
    want = _numpy_elbo(vae, images, samples=40, seed=0)
    assert np.mean(ours) == pytest.approx(np.mean(want), rel=0.02)
    # And the k-sample bound is at least the ELBO (Burda et al.), up to sampling noise.
    assert np.mean(vae.log_likelihood(images, k=50, seed=0)) >= np.mean(want) - 0.02 * abs(np.mean(want))


def test_label_free_config_errors_name_the_key():
    from reprlearn.config import ConfigError
    with pytest.raises(ConfigError, match="model.code_dim=0"):
        _ae_config(kind="autoencoder", code_dim=0)
    with pytest.raises(ConfigError, match="model.tower='backbone'"):
        _ae_config(kind="vae", tower="backbone")
    with pytest.raises(ConfigError, match="model.decoder='deconv'"):
        _ae_config(kind="autoencoder", decoder="deconv")


def test_cli_trains_an_autoencoder_config(tmp_path, capsys):
    from reprlearn.cli import main

    assert main(["train", "configs/digits_debug.yaml", "--out", str(tmp_path), "--quiet",
                 "--set", "model.kind=autoencoder", "--set", "model.code_dim=4", "--set", "train.epochs=1",
                 "--set", "train.steps_per_epoch=5", "--set", "train.batch_size=32"]) == 0
    printed = capsys.readouterr().out
    assert "Test reconstruction MSE" in printed and "codes MAP@R" in printed
