"""pytest plugin: every reprlearn training loss replaced by zero, to check that the learning tests can fail.

    .venv/bin/python -m pytest -p tests.zero_loss tests/test_train.py tests/test_autoencoders.py \
        tests/test_verifiers.py -k "learns_beyond or improve_their_own or verifiers_learn"

Every selected test must fail under it; it is never loaded by a plain `make test`.
"""
import keras
import tensorflow as tf

import reprlearn.training.objectives as objectives
import reprlearn.training.autoencoder as ae
import reprlearn.training.verifier as verifier
from reprlearn.models import VAE


class ZeroLoss(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return 0.0 * tf.reduce_sum(tf.cast(y_pred, tf.float32), axis=-1)

    def active_fraction(self, y_true, y_pred):
        return tf.constant(0.0)


objectives.config_loss = lambda *args, **kwargs: ZeroLoss()
verifier.verifier_loss = ZeroLoss
_pk_training_model = objectives._pk_training_model


def _zero_terms(*args, **kwargs):
    """The extra terms of a multi-output model (JRD, reconstruction) are zero too."""
    model, losses, weights, metrics = _pk_training_model(*args, **kwargs)
    return model, {name: ZeroLoss() for name in losses} if isinstance(losses, dict) else losses, weights, metrics


objectives._pk_training_model = _zero_terms
_build = ae.build_autoencoder


def _zero_build(cfg, shape):
    model = _build(cfg, shape)
    if not isinstance(model, VAE):
        model.compile(optimizer=model.optimizer, loss=ZeroLoss())
    return model


ae.build_autoencoder = _zero_build
_update = VAE._update
VAE._update = lambda self, reconstruction, kl: 0.0 * _update(self, reconstruction, kl)
