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
from reprlearn.data import ImageSet, Splits, flat_pixels
from reprlearn.data.pipelines import batches_in_order, image_batches
from reprlearn.evaluation.scoring import pca_fit_sample
from reprlearn.metrics import retrieval_metrics
from reprlearn.models import VAE, conv_autoencoder, dense_autoencoder
from reprlearn.runs import run_summary, save_and_check_reload
from reprlearn.runs.inference import SET_BATCH
from reprlearn.runs.record import BAD_IMAGE_LOG, files_report
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
    """`[B, H, W, C]` reconstructions in [0, 1] (a VAE decodes the posterior mean)."""
    return keras.ops.convert_to_numpy(model(np.asarray(images, np.float32), training=False)).astype(np.float32)


# A run on files fits its PCA baseline on the full pixels of at most this many bytes of training images (float32),
# drawn as `pca_fit_sample` draws them, so the baseline's memory does not grow with the dataset or the image size.
PCA_FIT_BYTES = 256 * 2**20


def pixel_pca(train: ImageSet, dim: int, seed: int) -> PCA:
    """The reconstruction baseline: a PCA with `dim` components fit on training images' full pixels in [0, 1]
    (every image of an in-memory set; a sample of a set of files, see `PCA_FIT_BYTES`)."""
    if not train.streamed:
        fit = flat_pixels(train.images)
    else:
        sample = pca_fit_sample(train, seed)
        limit = max(dim, PCA_FIT_BYTES // (4 * int(np.prod(train.image_shape))))
        if len(sample) > limit:
            sample = sample.subset(np.sort(np.random.default_rng(seed).choice(len(sample), limit, replace=False)))
        fit = np.concatenate([images.reshape(len(images), -1) / np.float32(255.0)
                              for images, _ in batches_in_order(sample, SET_BATCH)])
    return PCA(n_components=min(dim, *fit.shape), random_state=seed).fit(fit)


def evaluate_autoencoder(cfg: Config, model: keras.Model, splits: Splits) -> dict:
    """Reconstruction (and for a VAE, likelihood) on the test images; retrieval of codes, PCA and raw pixels.

    The test split is read once, `SET_BATCH` images at a time (decoded per batch for a set of files): nothing
    holds its pixels whole. A file that fails to decode is left out of every score and named.
    """
    seed, test, is_vae = cfg.data.seed, splits.test, isinstance(model, VAE)
    encoder, pca = code_model(model), pixel_pca(splits.train, cfg.model.code_dim, seed)
    codes = np.full((len(test), *encoder.output_shape[1:]), np.nan, np.float32)
    pca_codes = np.full((len(test), pca.n_components_), np.nan, np.float32)
    elbo = np.full(len(test), np.nan)
    squared_error = pca_squared_error = 0.0
    for images, items in batches_in_order(test, SET_BATCH):
        pixels = images.reshape(len(images), -1) / np.float32(255.0)
        codes[items] = keras.ops.convert_to_numpy(encoder(images, training=False))
        squared_error += float(np.sum((reconstruct(model, images).reshape(len(images), -1) - pixels) ** 2,
                                      dtype=np.float64))
        pca_codes[items] = pca.transform(pixels)
        pca_squared_error += float(np.sum((pca.inverse_transform(pca_codes[items]) - pixels) ** 2, dtype=np.float64))
        if is_vae:  # seeded by the batch's first row, as one call over the whole split would seed it
            elbo[items] = model.log_likelihood(images, k=1, seed=seed + int(items[0]))
    kept = np.flatnonzero(~np.isnan(codes[:, 0]))
    failed = [test.names[i] for i in np.setdiff1d(np.arange(len(test)), kept)]
    if failed:
        test, codes, pca_codes, elbo = test.subset(kept), codes[kept], pca_codes[kept], elbo[kept]
    values = max(1, len(test) * int(np.prod(test.image_shape)))
    mse, pca_mse = squared_error / values, pca_squared_error / values
    metrics = {"reconstruction": {"mse": mse, "pca_mse": pca_mse, "mse_over_pca": mse / pca_mse}}
    if is_vae:
        probe = test.subset(np.arange(min(IWAE_IMAGES, len(test))))
        iwae = np.concatenate([model.log_likelihood(images, k=IWAE_K, seed=seed + int(items[0]))
                               for images, items in batches_in_order(probe, SET_BATCH)])
        metrics["likelihood"] = {
            "elbo_nats_per_image": float(np.mean(elbo)),
            "negative_elbo_nats_per_image": float(-np.mean(elbo)),
            f"iwae_k{IWAE_K}_nats_per_image": float(np.mean(iwae)),
            f"elbo_on_same_{len(iwae)}_images": float(np.mean(elbo[:len(iwae)])),
        }
    metrics["test"] = retrieval_metrics(codes, test.labels, CODE_METRIC, seed=seed)
    metrics["pca"] = retrieval_metrics(pca_codes, test.labels, CODE_METRIC, seed=seed)
    metrics["baseline_raw"] = retrieval_metrics(flat_pixels(test), test.labels, "L2", seed=seed)
    if failed:
        metrics["skipped_files"] = failed
    return {"metrics": metrics, "codes": codes, "test": test,
            "reconstruct": lambda images: reconstruct(model, images)}


def run_autoencoder(cfg: Config, out: Path, splits: Splits, verbose: int = 1,
                    callbacks: list[keras.callbacks.Callback] | None = None,
                    strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and reports an autoencoder or VAE run in an opened run folder (see `reprlearn.training`)."""
    from reprlearn.evaluation.report import write_autoencoder_report

    strategy = strategy or tf.distribute.get_strategy()
    bad_image_log = str(out / BAD_IMAGE_LOG) if splits.train.streamed else None

    def batches(model, start_step, shard=None):
        return image_batches(splits.train, cfg.train.batch_size, cfg.train.seed, start_step=start_step,
                             targets=not isinstance(model, VAE), bad_image_log=bad_image_log, shard=shard)

    trained = train_run(out, cfg, strategy, lambda: build_autoencoder(cfg, splits.train.image_shape), batches, None,
                        callbacks, verbose, worker_batches=lambda model, start, worker, workers: batches(
                            model, start, (worker, workers)))
    if trained is None:  # a worker other than the chief: the chief writes the run
        return {}
    model = trained.model

    # model.keras is the encoder (images → code), what retrieval and `reprlearn export` use.
    save_and_check_reload(code_model(model), out / "model.keras", splits.test)
    whole = out / ("vae.keras" if isinstance(model, VAE) else "autoencoder.keras")
    model.save(whole)
    model = keras.saving.load_model(whole, compile=False)  # evaluate the file users load, outside any strategy

    evaluation = evaluate_autoencoder(cfg, model, splits)
    report = {**run_summary(cfg, out, trained.epochs_done, trained.seconds, trained.history, cfg.train.batch_size),
              "model": {"kind": cfg.model.kind, "tower": cfg.model.tower, "code_dim": cfg.model.code_dim,
                        "parameters": int(model.count_params()), "reload_max_abs_diff": 0.0},
              "metrics": evaluation["metrics"],
              **files_report(splits, out)}
    write_autoencoder_report(report, out, evaluation, cfg, model)
    return report
