"""The label-free driver: config → data → autoencoder or VAE → fit → reconstruction / likelihood → codes → report.

`reprlearn train` calls it for `model.kind: autoencoder` or `vae`. The codes (the encoder's
output; a VAE's posterior mean) are scored for retrieval on the test protocol with cosine
k-NN, beside PCA at the same dimension (fit on the training images) and raw pixels.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.decomposition import PCA

from reprlearn.config import Config
from reprlearn.data import Splits, flat_pixels
from reprlearn.data.pipelines import image_batches
from reprlearn.metrics import retrieval_metrics
from reprlearn.models import VAE, conv_autoencoder, dense_autoencoder
from reprlearn.runs import embed, run_summary, save_and_check_reload
from reprlearn.training.loop import train_run
from reprlearn.training.objectives import make_optimizer

CODE_METRIC = "angular"  # cosine k-NN on the codes
IWAE_K = 100
IWAE_IMAGES = 1000


def build_autoencoder(cfg: Config, image_shape) -> keras.Model:
    """The compiled training model: a `VAE`, or the autoencoder of `conv_autoencoder`/`dense_autoencoder`."""
    m, optimizer = cfg.model, make_optimizer(cfg)
    if m.kind == "vae":
        model = VAE(image_shape, m.code_dim, "conv" if m.tower == "conv" else "dense", m.filters, m.hidden,
                    m.likelihood, m.beta)
        model.compile(optimizer=optimizer, jit_compile=cfg.train.jit_compile)
        return model
    if m.tower == "conv":
        parts = conv_autoencoder(image_shape, m.filters, m.code_dim, m.decoder)
    else:
        parts = dense_autoencoder(image_shape, m.hidden, m.code_dim, linear=m.linear)
    parts.autoencoder.compile(optimizer=optimizer, loss="mse", jit_compile=cfg.train.jit_compile)
    return parts.autoencoder


def code_model(model: keras.Model) -> keras.Model:
    """images → code: the autoencoder's `code` layer, or the VAE encoder's mean."""
    if isinstance(model, VAE):
        return keras.Model(model.encoder.input, model.encoder.outputs[0], name="encoder_mean")
    return keras.Model(model.input, model.get_layer("code").output, name="encoder")


def reconstruct(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return model.reconstruct(images) if isinstance(model, VAE) else model.predict(images, batch_size=512, verbose=0)


def evaluate_autoencoder(cfg: Config, model: keras.Model, splits: Splits) -> dict:
    """Reconstruction (and for a VAE, likelihood) on the test images; retrieval of codes, PCA and raw pixels."""
    test, seed = splits.test, cfg.data.seed
    codes = embed(code_model(model), test.images)
    reconstructions = reconstruct(model, test.images)
    test_pixels = flat_pixels(test.images)
    pca = PCA(n_components=cfg.model.code_dim, random_state=seed).fit(flat_pixels(splits.train.images))
    pca_codes = pca.transform(test_pixels)
    pca_mse = float(np.mean((pca.inverse_transform(pca_codes) - test_pixels) ** 2))
    mse = float(np.mean((reconstructions.reshape(len(test), -1) - test_pixels) ** 2))
    metrics = {"reconstruction": {"mse": mse, "pca_mse": pca_mse, "mse_over_pca": mse / pca_mse}}
    if isinstance(model, VAE):
        elbo = model.log_likelihood(test.images, k=1, seed=seed)
        probe = test.images[:IWAE_IMAGES]
        metrics["likelihood"] = {
            "elbo_nats_per_image": float(np.mean(elbo)),
            "negative_elbo_nats_per_image": float(-np.mean(elbo)),
            f"iwae_k{IWAE_K}_nats_per_image": float(np.mean(model.log_likelihood(probe, k=IWAE_K, seed=seed))),
            f"elbo_on_same_{len(probe)}_images": float(np.mean(elbo[:len(probe)])),
        }
    metrics["test"] = retrieval_metrics(codes, test.labels, CODE_METRIC, seed=seed)
    metrics["pca"] = retrieval_metrics(pca_codes, test.labels, CODE_METRIC, seed=seed)
    metrics["baseline_raw"] = retrieval_metrics(test_pixels, test.labels, "L2", seed=seed)
    return {"metrics": metrics, "codes": codes, "reconstructions": reconstructions}


def run_autoencoder(cfg: Config, out: Path, splits: Splits, verbose: int = 1,
                    callbacks: list[keras.callbacks.Callback] | None = None,
                    strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and reports an autoencoder or VAE run in an opened run folder (see `reprlearn.training`)."""
    from reprlearn.evaluation.report import write_autoencoder_report

    strategy = strategy or tf.distribute.get_strategy()
    trained = train_run(out, cfg, strategy, lambda: build_autoencoder(cfg, splits.train.images.shape[1:]),
                        lambda model, start: image_batches(splits.train.images, cfg.train.batch_size, cfg.train.seed,
                                                           start_step=start, targets=not isinstance(model, VAE)),
                        None, callbacks, verbose)
    if trained is None:  # a worker other than the chief: the chief writes the run
        return {}
    model = trained.model

    # model.keras is the encoder (images → code), what retrieval and `reprlearn export` use.
    save_and_check_reload(code_model(model), out / "model.keras", splits.test.images[:256])
    whole = out / ("vae.keras" if isinstance(model, VAE) else "autoencoder.keras")
    model.save(whole)
    model = keras.saving.load_model(whole, compile=False)  # evaluate the file users load, outside any strategy

    evaluation = evaluate_autoencoder(cfg, model, splits)
    report = {**run_summary(cfg, out, trained.epochs_done, trained.seconds, trained.history, cfg.train.batch_size),
              "model": {"kind": cfg.model.kind, "tower": cfg.model.tower, "code_dim": cfg.model.code_dim,
                        "parameters": int(model.count_params()), "reload_max_abs_diff": 0.0},
              "metrics": evaluation["metrics"]}
    write_autoencoder_report(report, out, splits, evaluation, cfg, model)
    return report
