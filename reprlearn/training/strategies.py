"""Where a run trains: the `tf.distribute` strategy of `train.strategy`, the dtype policy of `train.mixed_precision`.

    auto          MirroredStrategy over the visible GPUs when there are two or more, else one device
    one_device    one GPU if there is one, else the CPU
    mirrored      every visible GPU (or, with none, every logical CPU device) of this process
    multi_worker  MultiWorkerMirroredStrategy over the processes listed in TF_CONFIG
                  (`reprlearn train --workers N` starts N of them on this machine)

The configured batch (P × K, pairs, or images) is the *global* batch: each of R replicas gets
`batch / R` consecutive rows of it, and P × K batches are laid out class by class, so with P a
multiple of R every replica holds whole classes. The in-batch losses all-gather the slices and
mine the global batch (see `reprlearn.ops.replicas`).

Example:
    strategy = make_strategy("mirrored")
    with strategy.scope(), dtype_policy("mixed_bfloat16"):
        model = build_tower(...)
"""

from __future__ import annotations

import contextlib
import os

import keras
import tensorflow as tf

from reprlearn.config import PRECISIONS, STRATEGIES
from reprlearn.errors import ConfigError


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy `train.strategy` names (see the module docstring); ValueError for an unknown name.

    One strategy of each name per process, reused by later runs: two mirrored strategies over the
    same devices would hand out the same collective-op keys and mix up each other's all-gathers.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {list(STRATEGIES)}. Received: train.strategy={name!r}")
    if name not in _STRATEGIES:
        _STRATEGIES[name] = _new_strategy(name)
    return _STRATEGIES[name]


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def _new_strategy(name: str) -> tf.distribute.Strategy:
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.strategy='multi_worker' needs the TF_CONFIG environment variable describing the "
                             "cluster (`reprlearn train --workers N` sets it for N workers on this machine). "
                             "Received: no TF_CONFIG")
        # Before anything else starts TensorFlow's runtime (listing logical devices would).
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder: always, except on the non-chief workers of a multi-worker run."""
    return strategy.extended.should_checkpoint


def check_global_batch(batch: int, classes_per_batch: int | None, replicas: int) -> None:
    """The global batch splits into equal replica slices (whole classes for P×K batches), or ValueError."""
    if classes_per_batch is not None and classes_per_batch % replicas:
        raise ConfigError(f"train.classes_per_batch must be a multiple of the {replicas} replicas, so that each "
                         f"replica holds whole classes of the global batch. "
                         f"Received: train.classes_per_batch={classes_per_batch}")
    if batch % replicas:
        raise ConfigError(f"the global batch must split evenly over the {replicas} replicas. "
                         f"Received: a batch of {batch}")


def check_jit_compile(jit_compile: bool, strategy: tf.distribute.Strategy) -> None:
    """ValueError for `train.jit_compile` where it cannot run: several CPU replicas, or the multi-worker loop.

    XLA cannot compile a step whose replicas' variables sit on other logical CPU devices (TensorFlow's
    known issue "tf.Variable on a different device"; measured here with plain Keras and an MSE loss),
    and the multi-worker custom loop does not compile its step with XLA.
    """
    if not jit_compile:
        return
    if is_multi_worker(strategy):
        raise ConfigError("train.jit_compile is not supported under train.strategy='multi_worker'. "
                         "Received: train.jit_compile=True")
    if strategy.num_replicas_in_sync > 1 and not tf.config.list_logical_devices("GPU"):
        raise ConfigError(f"train.jit_compile cannot compile a step over {strategy.num_replicas_in_sync} CPU replicas "
                         "(XLA cannot reach variables on another logical CPU device); set train.jit_compile=false "
                         "or train.strategy=one_device. Received: train.jit_compile=True")


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds models under Keras' `name` policy (`none`: float32), restoring the caller's policy afterwards.

    Layers keep the policy they were built with (it is saved in `.keras` files too), so the global
    policy is only needed while a model is made.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision must be one of {list(PRECISIONS)}. "
                         f"Received: train.mixed_precision={name!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if name == "none" else name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
