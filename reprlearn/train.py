"""The training driver: config → data → tower → loss → fit → evaluate → report.

Read it top to bottom; `run_training` is the whole job.

Example:
    from reprlearn.config import load_config
    report = run_training(load_config("configs/demo.yaml"), "runs/demo")
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from reprlearn.config import Config, LossConfig, config_to_dict, save_config
from reprlearn.data import ImageSet, Splits, splits_for
from reprlearn.data.pipelines import pair_batches, pk_batches
from reprlearn.distances import paired_distance
from reprlearn.losses import ContrastiveLoss, LiftedStructLoss, TripletLoss
from reprlearn.metrics import (ActiveFraction, MeanNegativeDistance, MeanPositiveDistance, retrieval_metrics,
                               sample_pairs, verification_metrics)
from reprlearn.models import build_tower, siamese_pair_model

TOWER_NAME = "tower"


def embed(tower: keras.Model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeds images (pixels 0-255) with a tower, as float32 `[N, d]`."""
    return np.asarray(tower.predict(images.astype(np.float32), batch_size=batch_size, verbose=0), np.float32)


class RetrievalValidation(keras.callbacks.Callback):
    """Adds `val_map_at_r` and `val_precision_at_1` to each epoch's logs (before TensorBoard sees them).

    A loss cannot compare runs with different margins; a retrieval metric on held-out data can.
    """

    def __init__(self, tower: keras.Model, images: np.ndarray, labels: np.ndarray, metric: str):
        super().__init__()
        self.tower, self.images, self.labels, self.metric = tower, images, labels, metric

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.labels) < 2:
            return
        scores = retrieval_metrics(embed(self.tower, self.images), self.labels, self.metric, compute_nmi=False)
        logs["val_map_at_r"] = scores["map_at_r"]
        logs["val_precision_at_1"] = scores["precision_at_1"]


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (weights and optimizer) after every epoch, atomically.

    `state.json` records the number of finished epochs; it is written after the model file
    is renamed into place, so a kill at any moment leaves a consistent pair.
    """

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "last.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.directory / "last.keras")
        history = read_checkpoint_state(self.directory).get("history", [])
        history.append({k: float(v) for k, v in (logs or {}).items()})
        _write_json_atomic(self.directory / "state.json", {"epochs_done": epoch + 1, "history": history})


def read_checkpoint_state(directory: Path) -> dict:
    path = directory / "state.json"
    return json.loads(path.read_text()) if path.is_file() and (directory / "last.keras").is_file() else {}


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def is_pair_loss(cfg: Config) -> bool:
    return cfg.loss.name == "pair_contrastive"


def make_loss(cfg: LossConfig) -> keras.losses.Loss:
    """The Keras loss a config names."""
    if cfg.name == "pair_contrastive":
        return ContrastiveLoss(margin=cfg.margin)
    if cfg.name == "contrastive":
        return ContrastiveLoss(margin=cfg.margin, in_batch=True, distance=cfg.distance)
    if cfg.name == "lifted_struct":
        return LiftedStructLoss(margin=cfg.margin)
    miner = {"triplet_semihard": "semi-hard", "triplet_hard": "batch-hard", "triplet_batch_all": "batch-all"}
    return TripletLoss(miner=miner[cfg.name], margin=cfg.margin, distance=cfg.distance, soft=cfg.soft,
                       active_only=cfg.name == "triplet_batch_all")


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    """Adam at `train.learning_rate`, constant or cosine-decayed over the whole run."""
    rate = cfg.train.learning_rate
    if cfg.train.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, cfg.train.epochs * cfg.train.steps_per_epoch)
    return keras.optimizers.Adam(rate)


def build_model(cfg: Config, tower: keras.Model) -> keras.Model:
    """The compiled training model: the tower itself for in-batch losses, a Siamese pair model for pair losses.

    In-batch runs also log the active fraction of the loss and the mean positive and negative distances.
    """
    loss = make_loss(cfg.loss)
    if is_pair_loss(cfg):
        model = siamese_pair_model(tower, distance=cfg.loss.distance)
        metrics = [ActiveFraction(loss)]
    else:
        model = tower
        metrics = [ActiveFraction(loss), MeanPositiveDistance(cfg.loss.distance),
                   MeanNegativeDistance(cfg.loss.distance)]
    model.compile(optimizer=make_optimizer(cfg), loss=loss, metrics=metrics,
                  jit_compile=cfg.train.jit_compile)
    return model


def training_batches(cfg: Config, train: ImageSet, start_step: int):
    """Balanced pairs for pair losses, P×K batches for in-batch losses, starting at batch `start_step`."""
    if is_pair_loss(cfg):
        return pair_batches(train.images, train.labels, cfg.train.pair_batch_size, cfg.train.seed, start_step)
    return pk_batches(train.images, train.labels, cfg.train.classes_per_batch, cfg.train.examples_per_class,
                      cfg.train.seed, start_step)


def batch_size(cfg: Config) -> int:
    if is_pair_loss(cfg):
        return cfg.train.pair_batch_size
    return cfg.train.classes_per_batch * cfg.train.examples_per_class


def evaluate(cfg: Config, tower: keras.Model, splits: Splits) -> dict:
    """Retrieval on the test protocol and the raw-pixel baseline, and verification on sampled test pairs."""
    test = splits.test
    embeddings = embed(tower, test.images)
    raw = test.images.reshape(len(test), -1).astype(np.float32) / 255.0
    first, second, match = sample_pairs(test.labels, cfg.eval.verification_pairs, seed=cfg.data.seed)
    distances = paired_distance(embeddings[first], embeddings[second], cfg.loss.distance).numpy()
    metrics = {
        "test": retrieval_metrics(embeddings, test.labels, cfg.loss.distance, seed=cfg.data.seed),
        "baseline_raw": retrieval_metrics(raw, test.labels, "L2", seed=cfg.data.seed),
        "verification": verification_metrics(distances, match, seed=cfg.data.seed),
    }
    pairs = {"distances": distances, "match": match}
    return {"metrics": metrics, "embeddings": embeddings, "pairs": pairs}


def prepare_run(cfg: Config, out_dir: str | Path, sets: dict[str, ImageSet] | None, command: str | None):
    """Creates the run folder, saves the resolved config, seeds, and loads and splits the data (all input checks)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml", command)
    keras.utils.set_random_seed(cfg.train.seed)
    splits = splits_for(cfg.data, sets)
    return out, splits


def resume_or_build(out: Path, build, cfg: Config, verbose: int) -> tuple[keras.Model, int]:
    """The checkpoint of an interrupted run (weights and optimizer state) and its finished epochs, or `build()`."""
    checkpoints = out / "checkpoints"
    epochs_done = int(read_checkpoint_state(checkpoints).get("epochs_done", 0))
    if not epochs_done:
        return build(), 0
    if verbose:
        print(f"Resuming from {checkpoints / 'last.keras'}: {epochs_done} of {cfg.train.epochs} epochs done.")
    return keras.saving.load_model(checkpoints / "last.keras"), epochs_done


def fit_resumable(model: keras.Model, dataset, cfg: Config, out: Path, epochs_done: int,
                  validation: keras.callbacks.Callback | None, callbacks: list[keras.callbacks.Callback] | None,
                  verbose: int) -> tuple[float, list[dict]]:
    """Fits the remaining epochs with per-epoch checkpoints and TensorBoard; returns (seconds, full history).

    `validation` runs first, so the checkpoint's history and TensorBoard see the metrics it logs;
    `callbacks` (the caller's) run last. The dataset is keyed by step, so a resumed run sees exactly
    the batches it would have seen.
    """
    checkpoints = out / "checkpoints"
    callbacks = [*([validation] if validation else []), EpochCheckpoint(checkpoints),
                 keras.callbacks.TensorBoard(log_dir=str(out / "logs")), *(callbacks or [])]
    started = time.perf_counter()
    if epochs_done < cfg.train.epochs:
        model.fit(dataset, epochs=cfg.train.epochs, initial_epoch=epochs_done,
                  steps_per_epoch=cfg.train.steps_per_epoch, callbacks=callbacks, verbose=verbose, shuffle=False)
    return time.perf_counter() - started, read_checkpoint_state(checkpoints).get("history", [])


def save_and_check_reload(model: keras.Model, path: Path, probe: np.ndarray) -> float:
    """Saves `model` and proves the file reloads to identical outputs on `probe`; returns the max abs diff (0)."""
    model.save(path)
    reload_diff = float(np.max(np.abs(embed(keras.saving.load_model(path), probe) - embed(model, probe))))
    if reload_diff != 0.0:
        raise RuntimeError(f"{path.name} reloads to different outputs (max abs diff {reload_diff})")
    return reload_diff


def run_summary(cfg: Config, splits: Splits, epochs_done: int, seconds: float, history: list[dict],
                batch: int) -> dict:
    """The config, data and training sections every run report starts with."""
    epochs_run = cfg.train.epochs - epochs_done
    examples = epochs_run * cfg.train.steps_per_epoch * batch
    return {
        "config": config_to_dict(cfg),
        "data": {"name": cfg.data.name, "protocol": cfg.data.protocol,
                 "train_classes": splits.train_classes, "test_classes": splits.test_classes,
                 "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
                 "image_shape": list(splits.train.images.shape[1:])},
        "train": {"epochs": cfg.train.epochs, "epochs_this_session": epochs_run,
                  "resumed_from_epoch": epochs_done, "seconds": round(seconds, 2),
                  "examples_per_second": round(examples / seconds, 1) if examples and seconds > 0 else None,
                  "batch_size": batch, "steps_per_epoch": cfg.train.steps_per_epoch, "history": history},
    }


def run_training(cfg: Config, out_dir: str | Path, sets: dict[str, ImageSet] | None = None,
                 command: str | None = None, verbose: int = 1,
                 callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Trains, evaluates and reports one run; resumes from the last finished epoch if interrupted.

    Args:
        cfg: a validated Config.
        out_dir: the run folder (created). Re-running into the same folder resumes.
        sets: loader-style splits to use instead of `cfg.data.name` (e.g. your own arrays via
            `reprlearn.data.make_imageset`).
        command: the command line, written at the top of the saved config.
        verbose: Keras progress output (0 silent, 1 progress bars).
        callbacks: extra Keras callbacks, run after the validation, checkpoint and TensorBoard ones.

    Returns:
        The report dict also written to `out_dir/report.json`.
    """
    from reprlearn.report import write_report  # plotting stays out of the import path of library users

    if cfg.model.kind != "embedding":
        from reprlearn.train_autoencoder import run_autoencoder
        return run_autoencoder(cfg, out_dir, sets, command, verbose, callbacks)
    out, splits = prepare_run(cfg, out_dir, sets, command)
    if not is_pair_loss(cfg) and cfg.train.classes_per_batch > len(splits.train_classes):
        raise ValueError(f"train.classes_per_batch exceeds the {len(splits.train_classes)} training classes. "
                         f"Received: train.classes_per_batch={cfg.train.classes_per_batch}")

    # Model: a fresh tower, or the checkpoint of an interrupted run (weights and optimizer state).
    model, epochs_done = resume_or_build(out, lambda: build_model(cfg, build_tower(
        cfg.model, splits.train.images.shape[1:], name=TOWER_NAME)), cfg, verbose)
    tower = model.get_layer(TOWER_NAME) if is_pair_loss(cfg) else model
    dataset = training_batches(cfg, splits.train, start_step=epochs_done * cfg.train.steps_per_epoch)
    validation = RetrievalValidation(tower, splits.val.images, splits.val.labels, cfg.loss.distance)
    seconds, history = fit_resumable(model, dataset, cfg, out, epochs_done, validation, callbacks,
                                     verbose)

    # Save the embedding model and prove it reloads to identical embeddings.
    reload_diff = save_and_check_reload(tower, out / "model.keras", splits.test.images[:256])
    if model is not tower:
        model.save(out / "pair_model.keras")

    # Evaluate and report.
    evaluation = evaluate(cfg, tower, splits)
    report = {**run_summary(cfg, splits, epochs_done, seconds, history, batch_size(cfg)),
              "model": {"tower": cfg.model.tower, "embedding_dim": cfg.model.embedding_dim,
                        "parameters": int(tower.count_params()), "reload_max_abs_diff": reload_diff},
              "metrics": evaluation["metrics"]}
    write_report(report, out, splits, evaluation, cfg)
    return report

