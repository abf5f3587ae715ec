"""The training loop under a `tf.distribute` strategy, with per-epoch checkpoints and resumption.

One device and `MirroredStrategy` train with Keras' own `model.fit`. Under
`MultiWorkerMirroredStrategy`, Keras 3's `fit` fails on the versions pinned here
(keras-team/keras#20585: "Attempt to convert a value (PerReplica ...) to a Tensor"), so
`fit_custom_loop` runs the model's own `train_step` under `strategy.run`, with the same
callbacks, so the checkpoints, logs, history and report are those of `fit`. Only the chief runs
the callbacks that write (checkpoints, TensorBoard, progress); every worker trains.

Example:
    model, epochs_done = resume_or_build(out, build, cfg, strategy, verbose=1)
    seconds, history = fit_resumable(model, dataset, cfg, out, epochs_done, None, None, 1, strategy)
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from reprlearn.config import Config
from reprlearn.data.pipelines import worker_rows
from reprlearn.errors import ConfigError
from reprlearn.runs import CHECKPOINTS, read_checkpoint_state, write_json_atomic
from reprlearn.training.progress import progress
from reprlearn.training.strategies import dtype_policy, is_chief, is_multi_worker


LOSS_STATE = "loss_state.npz"


def save_loss_state(model: keras.Model, directory: Path) -> None:
    """Writes the state a model's loss keeps between steps (a cross-batch memory), atomically, beside the model."""
    state = getattr(model.loss, "state", None)
    if state is None:
        return
    tmp = directory / "loss_state.tmp.npz"
    with open(tmp, "wb") as file:
        np.savez(file, **state())
    os.replace(tmp, directory / LOSS_STATE)


def restore_loss_state(model: keras.Model, directory: Path) -> None:
    """Puts back the state `save_loss_state` wrote, so a resumed run's loss continues where it stopped."""
    restore = getattr(model.loss, "restore", None)
    if restore is not None and (directory / LOSS_STATE).is_file():
        with np.load(directory / LOSS_STATE) as state:
            restore(dict(state))


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights and optimizer) after every epoch, atomically.

    `state.json` records the number of finished epochs, their logs and the training seconds they took
    (summed over sessions, so a resumed run reports its whole training time); it is written after the
    model file is renamed into place, so a kill at any moment leaves a consistent pair.
    """

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "last.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.directory / "last.keras")
        save_loss_state(self.model, self.directory)
        state = read_checkpoint_state(self.directory)
        history = state.get("history", []) + [{k: float(v) for k, v in (logs or {}).items()}]
        write_json_atomic(self.directory / "state.json", {"epochs_done": epoch + 1, "history": history,
                                                          "seconds": state.get("seconds", 0.0) + seconds})


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first non-finite loss with a `ConfigError` that says where and what to change.

    Keras' `TerminateOnNaN` stops silently; a diverged run then fails later with NaN embeddings and no
    hint. This runs before the validation and checkpoint callbacks, so a diverged epoch is never
    checkpointed and the run keeps its last finite epoch.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg, self.epoch, self.last_finite = cfg, 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check((logs or {}).get("loss"), f"epoch {self.epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):  # the only loss check of the multi-worker loop, which logs per epoch
        self._check((logs or {}).get("loss"), f"epoch {epoch + 1}")
        # A loss that masks its non-finite rows can stay finite while the weights are not: check them too.
        broken = [weight.path for weight in self.model.weights
                  if not bool(keras.ops.all(keras.ops.isfinite(weight)))]
        if broken:
            self._fail(f"epoch {epoch + 1}", f"{len(broken)} weights are no longer finite (first: {broken[0]})")

    def _check(self, loss, where: str) -> None:
        if loss is None:
            return
        loss = float(loss)
        if np.isfinite(loss):
            self.last_finite = loss
            return
        self._fail(where, f"the loss is {loss}")

    def _fail(self, where: str, what: str) -> None:
        train = self.cfg.train
        hints = [f"lower train.learning_rate (now {train.learning_rate:g})"]
        if train.mixed_precision != "none":
            hints.append(f"set train.mixed_precision: none (now {train.mixed_precision})")
        last = f"{self.last_finite:.4g}" if self.last_finite is not None else "none yet"
        raise ConfigError(f"training diverged at {where}: {what} (last finite running loss: {last}). "
                          f"{' or '.join(hints).capitalize()}, then train again (with --force where the run folder "
                          "was kept: it keeps the last finite epoch's checkpoint)")


SELECTION_METRIC = "val_map_at_r"
VERIFIER_SELECTION_METRIC = "val_roc_auc"  # a verifier embeds nothing: its validation pairs' ROC AUC
TWO_TOWER_SELECTION_METRIC = "val_recall_at_1"  # two towers: validation queries finding their reference first
SELF_SUPERVISED_SELECTION_METRIC = "val_knn_accuracy"  # the weighted kNN monitor on validation images
# Logged 1.0 by an epoch whose embedding has collapsed (self-supervised runs): never kept, whatever train.keep says.
COLLAPSED = "val_collapsed"
BEST_WEIGHTS = "best.weights.h5"


def selection_metric(cfg: Config) -> str:
    """The validation score `train.keep: best` maximises: MAP@R, a verifier's ROC AUC on validation pairs, or two
    towers' Recall@1 on validation pairs."""
    return {"verifier": VERIFIER_SELECTION_METRIC, "two_tower": TWO_TOWER_SELECTION_METRIC,
            "self_supervised": SELF_SUPERVISED_SELECTION_METRIC}.get(cfg.model.kind, SELECTION_METRIC)


def _keeps_best(cfg: Config) -> bool:
    """Whether the best epoch's weights are saved: `train.keep: best`, and always for a run that can collapse (its
    last epoch may not be keepable)."""
    return cfg.train.keep == "best" or cfg.model.kind == "self_supervised"


def _score(epoch: dict, metric: str):
    """An epoch's selection score, None for an epoch that did not log it or that collapsed."""
    return None if epoch.get(COLLAPSED) else epoch.get(metric)


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the highest validation score (`metric`, logged by the validation
    callback) in `best.weights.h5` (`train.keep: best`).

    The best score so far comes from the checkpoint's history, so a resumed run compares against the
    epochs it finished before the interruption. Runs after the validation callback, before the checkpoint.
    """

    def __init__(self, directory: Path, metric: str = SELECTION_METRIC):
        super().__init__()
        self.directory, self.metric = directory, metric
        history = read_checkpoint_state(directory).get("history", [])
        self.best = max((s for s in (_score(epoch, metric) for epoch in history) if s is not None), default=None)

    def on_epoch_end(self, epoch, logs=None):
        score = _score(logs or {}, self.metric)
        if score is None or (self.best is not None and score <= self.best):
            return
        self.best = float(score)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "best.tmp.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, self.directory / BEST_WEIGHTS)


def kept_epoch(model: keras.Model, cfg: Config, out: Path, history: list[dict]) -> dict:
    """Loads the weights `train.keep` asks for and says which epoch they are from (1-based)."""
    metric = selection_metric(cfg)
    scores = [_score(epoch, metric) for epoch in history]
    best_file = out / CHECKPOINTS / BEST_WEIGHTS
    last_collapsed = bool(history) and bool(history[-1].get(COLLAPSED))
    if (cfg.train.keep == "best" or last_collapsed) and best_file.exists() and any(s is not None for s in scores):
        model.load_weights(best_file)
        best = max(range(len(scores)), key=lambda i: -np.inf if scores[i] is None else scores[i])
        note = {"note": f"epoch {len(history)} collapsed: the best epoch before it is kept"} if (
            last_collapsed and cfg.train.keep == "last") else {}
        return {"keep": "best", "epoch": best + 1, metric: scores[best], **note}
    if last_collapsed:
        raise ConfigError(f"the embedding collapsed (every image maps to nearly one point; {COLLAPSED} in the "
                          f"epoch logs) and no earlier epoch can be kept: lower train.learning_rate (now "
                          f"{cfg.train.learning_rate:g}), raise train.batch_size or try another model.method, then "
                          "train again with --force")
    note = {} if cfg.train.keep == "last" else {"note": f"no epoch logged {metric}: the last is kept"}
    return {"keep": "last", "epoch": len(history), **note}


def resume_or_build(out: Path, build, cfg: Config, strategy: tf.distribute.Strategy,
                    verbose: int) -> tuple[keras.Model, int]:
    """The checkpoint of an interrupted run (weights and optimizer state) and its finished epochs, or `build()`.

    The model is made under `strategy` and the run's dtype policy. A checkpoint's weights and
    optimizer state are loaded into a freshly built and compiled model, so the loss and its metrics
    are wired as `build` wires them (the metrics read the loss's distance matrix; a reloaded compile
    config would give each metric its own copy of the loss). In a multi-worker run every worker
    reads the same checkpoint, and the workers check that they agree on the epochs done.
    """
    checkpoints = out / CHECKPOINTS
    epochs_done = int(read_checkpoint_state(checkpoints).get("epochs_done", 0))
    with strategy.scope(), dtype_policy(cfg.train.mixed_precision):
        model = build()
        if epochs_done:
            if verbose and is_chief(strategy):
                print(f"Resuming from {checkpoints / 'last.keras'}: {epochs_done} of {cfg.train.epochs} epochs done.")
            model.optimizer.build(model.trainable_variables)
            model.load_weights(checkpoints / "last.keras")
            restore_loss_state(model, checkpoints)
    if is_multi_worker(strategy):
        _check_workers_agree(strategy, epochs_done)
    return model, epochs_done


def _check_workers_agree(strategy: tf.distribute.Strategy, epochs_done: int) -> None:
    every = strategy.gather(strategy.run(lambda: tf.constant([epochs_done])), axis=0).numpy()
    if every.min() != every.max():
        raise RuntimeError(f"the workers found different checkpoints ({every.min()} to {every.max()} epochs done): "
                           "they must share the run folder; restart the job")


def fit_resumable(model: keras.Model, dataset, cfg: Config, out: Path, epochs_done: int,
                  validation: keras.callbacks.Callback | None, callbacks: list[keras.callbacks.Callback] | None,
                  verbose: int, strategy: tf.distribute.Strategy, until: int | None = None,
                  worker_dataset=None) -> tuple[float, list[dict]]:
    """Fits the remaining epochs with per-epoch checkpoints and TensorBoard; returns (training seconds, history),
    both over every session of the run. `until`: stop after this epoch (default `train.epochs`);
    `worker_dataset(w, W)`: worker w's rows of the global batches in a multi-worker run (see `replica_slices`).

    `validation` runs first, so the checkpoint's history, TensorBoard and the progress line see the
    metrics it logs; `callbacks` (the caller's) run last. The dataset yields global batches keyed by
    step, so a resumed run sees exactly the batches it would have seen.
    """
    checkpoints = out / CHECKPOINTS
    chief = is_chief(strategy)
    keras_verbose, progress_callbacks = progress(verbose if chief else 0, cfg.train.epochs)
    selection = [BestEpoch(checkpoints, selection_metric(cfg))] if _keeps_best(cfg) else []
    writers = [StopOnNonFiniteLoss(cfg), *([validation] if validation else []), *selection,
               EpochCheckpoint(checkpoints), keras.callbacks.TensorBoard(log_dir=str(out / "logs")),
               *progress_callbacks, *(callbacks or [])]
    until = cfg.train.epochs if until is None else until
    if epochs_done < until:
        if is_multi_worker(strategy):
            fit_custom_loop(model, dataset, strategy, until, epochs_done, cfg.train.steps_per_epoch,
                            writers if chief else [], worker_dataset)
        else:
            model.fit(dataset, epochs=until, initial_epoch=epochs_done,
                      steps_per_epoch=cfg.train.steps_per_epoch, callbacks=writers, verbose=keras_verbose,
                      shuffle=False)
    state = read_checkpoint_state(checkpoints)
    return state.get("seconds", 0.0), state.get("history", [])


class Trained(NamedTuple):
    """What `train_run` hands a driver: the model with the kept epoch's weights, and how it got there."""
    model: keras.Model
    epochs_done: int  # finished before this session (a resumed run)
    seconds: float    # training time over every session of the run
    history: list     # every epoch's logs, earlier sessions included
    kept: dict        # which epoch's weights the model holds (`train.keep`)


def train_run(out: Path, cfg: Config, strategy: tf.distribute.Strategy, build, batches, validation=None,
              callbacks: list[keras.callbacks.Callback] | None = None, verbose: int = 1,
              unfreeze=None, worker_batches=None) -> Trained | None:
    """The sequence every driver runs: resume or build, fit the remaining epochs, then, on the chief, keep an epoch.

    Args:
        out: the opened run folder.
        cfg: the run's config.
        strategy: the distribution strategy the model is built and trained under.
        build: makes the compiled model (called under the strategy, unless a checkpoint is resumed into it).
        batches: `batches(model, start_step)`, the training dataset from global step `start_step` on.
        validation: `validation(model)`, the callback that logs the selection metric, or None.
        callbacks: the caller's callbacks, run last.
        verbose: progress output (see `reprlearn.training.progress`).
        worker_batches: `worker_batches(model, start_step, worker, workers)`, one worker's rows of the global
            batches (a streamed pipeline decodes only those); without it each worker slices the whole batch.
        unfreeze: `unfreeze(model)`, the model recompiled with its backbone trainable, after `train.frozen_epochs`
            head-only epochs (`build` then makes the backbone frozen); a resumed run past them is built and
            unfrozen before its checkpoint loads, so the optimizer state matches.

    Returns:
        A `Trained` on the chief; None on the other workers of a multi-worker run, which write nothing.
    """
    frozen = cfg.train.frozen_epochs if unfreeze else 0
    past_frozen = frozen and int(read_checkpoint_state(out / CHECKPOINTS).get("epochs_done", 0)) > frozen
    model, epochs_done = resume_or_build(out, (lambda: unfreeze(build())) if past_frozen else build, cfg, strategy,
                                         verbose)
    if epochs_done < frozen or (frozen and epochs_done == frozen and not past_frozen):
        if epochs_done < frozen:  # the head alone, over the frozen backbone
            start = epochs_done * cfg.train.steps_per_epoch
            fit_resumable(model, batches(model, start), cfg, out, epochs_done,
                          validation(model) if validation else None, callbacks, verbose, strategy, until=frozen,
                          worker_dataset=_for_workers(worker_batches, model, start))
        with strategy.scope(), dtype_policy(cfg.train.mixed_precision):
            model = unfreeze(model)
        epochs_done = frozen
        if verbose and is_chief(strategy):
            print(f"Epoch {frozen}: the backbone joins training (model.fine_tune_from: "
                  f"{cfg.model.fine_tune_from or 'all'}).", flush=True)
    dataset = batches(model, epochs_done * cfg.train.steps_per_epoch)
    seconds, history = fit_resumable(model, dataset, cfg, out, epochs_done, validation(model) if validation else None,
                                     callbacks, verbose, strategy, worker_dataset=_for_workers(
                                         worker_batches, model, epochs_done * cfg.train.steps_per_epoch))
    if not is_chief(strategy):
        return None
    return Trained(model, epochs_done, seconds, history, kept_epoch(model, cfg, out, history))


def _for_workers(worker_batches, model: keras.Model, start_step: int):
    if worker_batches is None:
        return None
    return lambda worker, workers: worker_batches(model, start_step, worker, workers)


def replica_slices(dataset: tf.data.Dataset, strategy: tf.distribute.Strategy, worker_dataset=None):
    """Distributes a dataset of global batches: replica r of R gets rows `[r·B/R, (r+1)·B/R)` of each batch.

    Worker w takes only its own rows: `worker_dataset(w, W)` builds them (a streamed P×K pipeline then decodes
    only its classes' files), or they are sliced from `dataset`. Its local replicas take consecutive slices of
    them, in the replica order `reprlearn.ops.replicas.global_batch` concatenates.
    """
    def worker_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
        workers, worker = context.num_input_pipelines, context.input_pipeline_id
        local_replicas = context.num_replicas_in_sync // workers
        own = worker_dataset(worker, workers) if worker_dataset else worker_rows(dataset, worker, workers)

        def per_replica(*batch):
            def split(tensor):
                size = tf.shape(tensor)[0] // local_replicas
                return tf.reshape(tensor, tf.concat([[local_replicas, size], tf.shape(tensor)[1:]], 0))
            return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(split, batch))

        return own.flat_map(per_replica)

    return strategy.distribute_datasets_from_function(worker_batches)


def fit_custom_loop(model: keras.Model, dataset: tf.data.Dataset, strategy: tf.distribute.Strategy, epochs: int,
                    initial_epoch: int, steps_per_epoch: int, callbacks: list[keras.callbacks.Callback],
                    worker_dataset=None) -> None:
    """`model.fit` for a compiled model under `strategy`, written out: `train_step` per replica, callbacks per epoch.

    Every process of the strategy calls it (the metric reads at the end of each epoch are collective);
    pass the writing callbacks to the chief only.
    """
    iterator = iter(replica_slices(dataset, strategy, worker_dataset))
    with strategy.scope():
        # Keras makes the optimizer's and the compiled metrics' variables on the first batch; here they are
        # made before the step is traced, in the strategy's scope, from one local batch. (A model with its own
        # train_step and no compiled loss, like the VAE, owns its metrics already.)
        if model.loss is not None:
            inputs, targets, _ = keras.utils.unpack_x_y_sample_weight(next(iter(dataset)))
            predictions = model(inputs, training=False)
            model.compute_loss(inputs, targets, predictions)
            model.compute_metrics(inputs, targets, predictions, sample_weight=None)
        model.optimizer.build(model.trainable_variables)

    @tf.function
    def train_steps(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch)
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for _ in range(steps_per_epoch):
            train_steps(iterator)
        logs = {name: float(value) for name, value in model.get_metrics_result().items()}
        callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end()
