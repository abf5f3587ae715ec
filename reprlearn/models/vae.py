"""Variational autoencoder (Kingma & Welling 2014) with an importance-weighted likelihood (Burda et al. 2016).

Loss per image: `−log p(x|z) + β·KL(q(z|x) || N(0, I))`, z = μ + exp(½·logvar)·ε, in nats.
Images are raw 0-255 pixels; the likelihood models x/255 ∈ [0, 1] per pixel: Bernoulli
(cross-entropy, the usual choice for MNIST-like data) or Gaussian with one learned scale.

Example:
    vae = VAE((28, 28, 1), latent_dim=16)
    vae.compile(optimizer="adam")
    vae.fit(images, epochs=5, batch_size=128)
    vae.log_likelihood(test_images, k=100)   # nats per image, ≥ the ELBO on average
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from reprlearn.errors import ConfigError
from reprlearn.models.autoencoders import check_poolable
from reprlearn.ops.replicas import replica_count

LIKELIHOODS = ("bernoulli", "gaussian")
ARCHITECTURES = ("conv", "dense")
_LOG_2PI = math.log(2.0 * math.pi)


def _gaussian_log_density(z, mean, logvar) -> tf.Tensor:
    """Σ over the last axis of log N(z; mean, exp(logvar))."""
    return -0.5 * tf.reduce_sum(_LOG_2PI + logvar + tf.square(z - mean) * tf.exp(-logvar), axis=-1)


@keras.saving.register_keras_serializable(package="reprlearn")
class VAE(keras.Model):
    """A VAE with dense or conv encoder/decoder, Bernoulli or Gaussian likelihood and a β weight.

    Args:
        image_shape: `(H, W, C)`.
        latent_dim: size of z, >= 1.
        architecture: `"conv"` (conv + stride-2 blocks, sizes divisible by 2^len(filters)) or `"dense"`.
        filters: conv widths; hidden: dense widths (mirrored in the decoder).
        likelihood: `"bernoulli"` or `"gaussian"` (one learned log-scale shared by all pixels).
        beta: the KL weight (1 gives the ELBO).
    """

    def __init__(self, image_shape: Sequence[int], latent_dim: int = 16, architecture: str = "conv",
                 filters: Sequence[int] = (32, 64), hidden: Sequence[int] = (256,), likelihood: str = "bernoulli",
                 beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(latent_dim, (int, np.integer)) or latent_dim < 1:
            raise ConfigError(f"latent_dim must be an int >= 1. Received: latent_dim={latent_dim!r}")
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {list(ARCHITECTURES)}. Received: architecture={architecture!r}")
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"likelihood must be one of {list(LIKELIHOODS)}. Received: likelihood={likelihood!r}")
        if not beta > 0:
            raise ConfigError(f"beta must be > 0. Received: beta={beta!r}")
        self.image_shape = tuple(int(v) for v in image_shape)
        self.latent_dim = int(latent_dim)
        self.architecture = architecture
        self.filters = [int(f) for f in filters]
        self.hidden = [int(h) for h in hidden]
        self.likelihood = likelihood
        self.beta = float(beta)
        if architecture == "conv":
            check_poolable(self.image_shape, len(self.filters), "transpose")
        self.encoder = self._build_encoder()
        self.decoder = self._build_decoder()
        self.log_scale = self.add_weight(shape=(), initializer="zeros", name="log_scale",
                                         trainable=likelihood == "gaussian")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.built = True  # encoder and decoder are built Functional models; nothing waits for a first call

    def _build_encoder(self) -> keras.Model:
        images = keras.Input(self.image_shape, name="images")
        x = keras.layers.Rescaling(1.0 / 255.0)(images)
        if self.architecture == "conv":
            for f in self.filters:
                x = keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu")(x)
            x = keras.layers.Flatten()(x)
        else:
            x = keras.layers.Flatten()(x)
            for width in self.hidden:
                x = keras.layers.Dense(width, activation="relu")(x)
        # The posterior and the likelihood stay float32 under mixed precision (exp, sums over pixels).
        mean = keras.layers.Dense(self.latent_dim, name="mean", dtype="float32")(x)
        logvar = keras.layers.Dense(self.latent_dim, name="logvar", dtype="float32")(x)
        return keras.Model(images, [mean, logvar], name="encoder")

    def _build_decoder(self) -> keras.Model:
        z = keras.Input((self.latent_dim,), name="z")
        if self.architecture == "conv":
            scale = 2 ** len(self.filters)
            bottom = (self.image_shape[0] // scale, self.image_shape[1] // scale, self.filters[-1])
            y = keras.layers.Reshape(bottom)(keras.layers.Dense(int(np.prod(bottom)), activation="relu")(z))
            for f in reversed(self.filters):
                y = keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu")(y)
            logits = keras.layers.Conv2D(self.image_shape[2], 3, padding="same", name="logits", dtype="float32")(y)
        else:
            y = z
            for width in reversed(self.hidden):
                y = keras.layers.Dense(width, activation="relu")(y)
            logits = keras.layers.Reshape(self.image_shape, dtype="float32")(
                keras.layers.Dense(int(np.prod(self.image_shape)), dtype="float32")(y))
        return keras.Model(z, logits, name="decoder")

    # ---- the model's parts, usable on their own ----

    def encode(self, images):
        """`(mean, logvar)` of q(z|x), each `[B, latent_dim]`."""
        return self.encoder(images)

    def decode(self, z):
        """The likelihood's mean in [0, 1] (pixel probabilities for Bernoulli), `[B, H, W, C]`."""
        return tf.sigmoid(self.decoder(z))

    def call(self, images, training=False):
        mean, _ = self.encoder(images, training=training)
        return self.decode(mean)

    def reconstruct(self, images) -> np.ndarray:
        """Decodes the posterior mean of each image: `[B, H, W, C]` in [0, 1]."""
        return self.predict(images, verbose=0)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Decodes `n` draws of z ~ N(0, I): `[n, H, W, C]` in [0, 1]."""
        z = tf.random.stateless_normal([n, self.latent_dim], seed=[0 if seed is None else seed, 0])
        return self.decode(z).numpy()

    def _log_px_given_z(self, targets, logits) -> tf.Tensor:
        """log p(x|z) summed over pixels, `[B]` (targets are x/255)."""
        axes = list(range(1, len(self.image_shape) + 1))
        if self.likelihood == "bernoulli":
            return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=axes)
        residual = (targets - tf.sigmoid(logits)) * tf.exp(-self.log_scale)
        return -tf.reduce_sum(0.5 * tf.square(residual) + self.log_scale + 0.5 * _LOG_2PI, axis=axes)

    def _targets(self, images) -> tf.Tensor:
        return tf.cast(images, tf.float32) / 255.0

    def elbo_terms(self, images, training=False, seed=None):
        """Per image: `(log p(x|z), KL(q||p))` with one reparameterised sample, each `[B]`."""
        mean, logvar = self.encoder(images, training=training)
        noise = (tf.random.normal(tf.shape(mean)) if seed is None
                 else tf.random.stateless_normal(tf.shape(mean), seed=[seed, 1]))
        z = mean + tf.exp(0.5 * logvar) * noise
        reconstruction = self._log_px_given_z(self._targets(images), self.decoder(z, training=training))
        kl = 0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mean) - 1.0 - logvar, axis=-1)
        return reconstruction, kl

    def importance_log_weights(self, images, k, seed=0) -> tf.Tensor:
        """`[k, B]` log importance weights `log p(x|z_i) + log p(z_i) − log q(z_i|x)`, z_i ~ q(z|x) (graph-safe)."""
        mean, logvar = self.encoder(images)
        noise = tf.random.stateless_normal(tf.concat([[k], tf.shape(mean)], 0), seed=tf.stack([seed, 7]))
        z = mean[None] + tf.exp(0.5 * logvar)[None] * noise                                  # [k, B, L]
        flat_z = tf.reshape(z, [-1, self.latent_dim])
        targets = tf.repeat(self._targets(images)[None], k, axis=0)
        targets = tf.reshape(targets, tf.concat([[-1], tf.shape(targets)[2:]], 0))
        log_px = tf.reshape(self._log_px_given_z(targets, self.decoder(flat_z)), [k, -1])
        return log_px + _gaussian_log_density(z, 0.0, tf.zeros_like(z)) - _gaussian_log_density(z, mean, logvar)

    def log_likelihood(self, images, k: int = 1, batch_size: int = 128, seed: int = 0,
                       samples_per_pass: int = 100) -> np.ndarray:
        """Importance-weighted estimate of log p(x) in nats per image, `[B]`; k = 1 is the ELBO (β = 1).

        `log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x)`, z_i ~ q(z|x). It rises towards log p(x) with k.
        The k samples are drawn `samples_per_pass` at a time, so memory does not grow with k.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be an int >= 1. Received: k={k!r}")
        images = np.asarray(images)
        out = []
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start:start + batch_size])
            weights = [self.importance_log_weights(batch, min(samples_per_pass, k - done), seed + start + done)
                       for done in range(0, k, samples_per_pass)]
            out.append((tf.reduce_logsumexp(tf.concat(weights, 0), axis=0) - math.log(k)).numpy())
        return np.concatenate(out)

    # ---- Keras training ----

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def _update(self, reconstruction, kl):
        loss = tf.reduce_mean(-reconstruction + self.beta * kl)
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(-tf.reduce_mean(reconstruction))
        self.kl_tracker.update_state(tf.reduce_mean(kl))
        return loss

    @staticmethod
    def _images(data):
        return data[0] if isinstance(data, (tuple, list)) else data

    def train_step(self, data):
        with tf.GradientTape() as tape:
            reconstruction, kl = self.elbo_terms(self._images(data), training=True)
            loss = self._update(reconstruction, kl)
            # Under R replicas the optimizer sums their gradients: each contributes its batch mean / R.
            # mixed_float16: scale_loss applies the loss-scale optimizer's scaling.
            scaled = self.optimizer.scale_loss(loss / replica_count())
        grads = tape.gradient(scaled, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        reconstruction, kl = self.elbo_terms(self._images(data))
        self._update(reconstruction, kl)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape, "latent_dim": self.latent_dim,
                "architecture": self.architecture, "filters": self.filters, "hidden": self.hidden,
                "likelihood": self.likelihood, "beta": self.beta}
