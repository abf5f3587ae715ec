"""The self-supervised driver: config → two-view batches → tower + heads → method loss → fit → evaluate →
report.

Read it top to bottom; `run_self_supervised` is the whole job. Training reads no label. Where the training side
has labels, each epoch scores the tower on validation images (never test): the weighted kNN monitor (k = 200,
T = 0.1, cosine, the bank a sample of training images without augmentation), MAP@R and P@1; the kept epoch is
chosen on the kNN score. Every epoch also logs the spread of the tower's normalised outputs on validation images,
and an epoch whose spread has fallen under a tenth of a healthy one's (1/√d) is marked collapsed and never kept.

Example:
    from reprlearn.config import load_config
    from reprlearn.training import run_training
    report = run_training(load_config("configs/ssl_digits.yaml"), "runs/ssl_digits")
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from reprlearn.config import Config
from reprlearn.config.self_supervised import METHOD_DEFAULTS
from reprlearn.data import ImageSet, Splits
from reprlearn.data.augment import MIRROR_INVARIANT
from reprlearn.data.imageset import is_unlabelled
from reprlearn.data.pipelines import two_view_batches
from reprlearn.errors import ConfigError
from reprlearn.losses.self_supervised import output_spread
from reprlearn.metrics import retrieval_metrics, weighted_knn_accuracy
from reprlearn.models import build_tower, initialise_from
from reprlearn.models.self_supervised import SelfSupervisedModel
from reprlearn.runs import embed, load_run, run_summary, save_and_check_reload
from reprlearn.runs.record import BAD_IMAGE_LOG, files_report
from reprlearn.training.embedding import model_record, report_embedding
from reprlearn.training.loop import COLLAPSED, train_run
from reprlearn.training.objectives import TOWER_NAME, make_optimizer

# The kNN monitor's neighbours and temperature (InstDisc / MoCo), and the most training images in its bank.
KNN_NEIGHBOURS, KNN_TEMPERATURE, KNN_BANK = 200, 0.1, 10_000
# An epoch has collapsed when its output spread is under this share of 1/√d.
COLLAPSE_SHARE = 0.1


def memory_size_for(cfg: Config, train_images: int) -> int:
    """`train.memory_size`, or the method's default capped at a quarter of the training images: a queue longer
    than the data set holds earlier keys of the very images it is asked to tell apart (false negatives)."""
    if cfg.train.memory_size is not None:
        return cfg.train.memory_size
    return min(METHOD_DEFAULTS[cfg.model.method].memory_size, train_images // 4)


def check_self_supervised_data(cfg: Config, splits: Splits) -> None:
    """Errors that need the data, raised before a run folder is made."""
    count = len(splits.train)
    if cfg.train.batch_size > count:
        raise ConfigError(f"train.batch_size takes distinct training images and the training split holds "
                          f"{count}. Received: train.batch_size={cfg.train.batch_size}")
    if cfg.train.memory_size is not None and cfg.train.memory_size >= count:
        raise ConfigError(f"train.memory_size must be below the {count} training images: a longer queue holds "
                          f"earlier keys of the very images it is asked to tell apart. Received: "
                          f"train.memory_size={cfg.train.memory_size}")


def linear_probe(train_embeddings, train_labels, test_embeddings, test_labels, seed: int = 0) -> float:
    """Accuracy of a logistic regression fit on training-side embeddings and scored on `test_embeddings` (the
    linear evaluation of SSL papers, on frozen features standardised with the training side's statistics)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_rows = np.isfinite(train_embeddings).all(axis=1)  # a streamed file that did not decode is a NaN row
    test_rows = np.isfinite(test_embeddings).all(axis=1)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    probe.fit(train_embeddings[train_rows], np.asarray(train_labels)[train_rows])
    return float(probe.score(test_embeddings[test_rows], np.asarray(test_labels)[test_rows]))


def _labelled(part: ImageSet) -> bool:
    return len(part) > 1 and len(np.unique(part.labels)) > 1


class SelfSupervisedValidation(keras.callbacks.Callback):
    """Logs `val_output_spread` and `val_collapsed` each epoch, and, where the sets have labels, the weighted kNN
    accuracy (`val_knn_accuracy`), `val_map_at_r` and `val_precision_at_1` of the tower on `val`."""

    def __init__(self, tower: keras.Model, bank: ImageSet, val: ImageSet, metric: str):
        super().__init__()
        self.tower, self.bank, self.val, self.metric = tower, bank, val, metric

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.val) == 0:
            return
        queries = embed(self.tower, self.val)
        finite = np.isfinite(queries).all(axis=1)
        spread = float(output_spread(queries[finite])) if finite.sum() > 1 else float("nan")
        logs["val_output_spread"] = spread
        logs[COLLAPSED] = float(not spread >= COLLAPSE_SHARE / math.sqrt(queries.shape[1]))
        if not (_labelled(self.bank) and _labelled(self.val)):
            return
        bank = embed(self.tower, self.bank)
        logs["val_knn_accuracy"] = weighted_knn_accuracy(bank, self.bank.labels, queries, self.val.labels,
                                                         KNN_NEIGHBOURS, KNN_TEMPERATURE)
        if np.bincount(np.searchsorted(np.unique(self.val.labels), self.val.labels)).max() > 1:
            scores = retrieval_metrics(queries, self.val.labels, self.metric, compute_nmi=False)
            logs["val_map_at_r"] = scores["map_at_r"]
            logs["val_precision_at_1"] = scores["precision_at_1"]


def knn_bank(train: ImageSet, seed: int) -> ImageSet:
    """At most `KNN_BANK` training images, drawn once with the run's seed, as the kNN monitor's bank."""
    if len(train) <= KNN_BANK:
        return train
    return train.subset(np.sort(np.random.default_rng(seed).choice(len(train), KNN_BANK, replace=False)))


def report_unscored(cfg: Config, out: Path, splits: Splits, trained, tower: keras.Model, extra: dict) -> dict:
    """Saves the tower of a run on images without labels, proves it reloads, and reports training alone."""
    from reprlearn.evaluation.report import write_unscored_report  # plotting stays out of library users' imports

    tower = save_and_check_reload(tower, out / "model.keras", splits.test)
    report = {**run_summary(cfg, out, trained.epochs_done, trained.seconds, trained.history, 2 * cfg.train.batch_size),
              "kept": trained.kept,
              "model": model_record(cfg, tower),
              "metrics": {}, "unlabelled": True, **extra, **files_report(splits, out)}
    write_unscored_report(report, out)
    return report


def run_self_supervised(cfg: Config, out: Path, splits: Splits, verbose: int = 1,
                        callbacks: list[keras.callbacks.Callback] | None = None,
                        strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains a tower without labels, evaluates and reports it as an embedding run, in an opened run folder."""
    strategy = strategy or tf.distribute.get_strategy()
    train, model_cfg = splits.train, cfg.model
    initialised = {}

    def build():
        tower = build_tower(model_cfg, train.image_shape, name=TOWER_NAME, streamed=train.streamed)
        if model_cfg.init_from:  # continue from another run's tower (a checkpoint, if any, loads over it)
            initialised.update(run=model_cfg.init_from,
                               layers=initialise_from(tower, load_run(model_cfg.init_from).model, False))
        model = SelfSupervisedModel(tower, model_cfg.method, model_cfg.projector, model_cfg.predictor,
                                    model_cfg.temperature, model_cfg.momentum, memory_size_for(cfg, len(train)),
                                    cfg.train.epochs * cfg.train.steps_per_epoch, name="self_supervised")
        model.compile(optimizer=make_optimizer(cfg), jit_compile=cfg.train.jit_compile)
        return model

    # Two views of distinct images, augmented by the recipe's two views; flips only where the classes allow.
    flips = MIRROR_INVARIANT.get(cfg.data.name, True)
    bad_image_log = str(out / BAD_IMAGE_LOG) if train.streamed else None

    def batches(model, start, shard=None):
        return two_view_batches(train, cfg.train.batch_size, cfg.train.seed, start, cfg.data.augment, flips,
                                cfg.data.augment_options, bad_image_log, shard)

    bank = knn_bank(train, cfg.data.seed)
    trained = train_run(out, cfg, strategy, build, batches,
                        lambda model: SelfSupervisedValidation(model.tower, bank, splits.val, cfg.loss.distance),
                        callbacks, verbose, None,
                        lambda model, start, worker, workers: batches(model, start, (worker, workers)))
    if trained is None:  # a worker other than the chief: the chief writes the run
        return {}

    # The tower alone is the run's model; the heads and momentum copies stay behind. The linear probe is fit on
    # training images and scored on the test split (nothing fitted on test).
    tower = trained.model.tower
    extra = {"self_supervised": {"method": model_cfg.method, "projector": list(trained.model.projector_widths),
                                 "predictor": list(trained.model.predictor_widths),
                                 "temperature": trained.model.temperature, "momentum": trained.model.momentum,
                                 "memory_size": trained.model.memory_size}}
    if is_unlabelled(train):  # nothing to score: the tower, proven to reload, and what training did
        return report_unscored(cfg, out, splits, trained, tower, extra)
    if _labelled(bank) and _labelled(splits.test):
        extra["self_supervised"]["linear_probe_accuracy"] = linear_probe(
            embed(tower, bank), bank.labels, embed(tower, splits.test), splits.test.labels, cfg.data.seed)
    return report_embedding(cfg, out, splits, trained, tower, 2 * cfg.train.batch_size,
                            initialised=initialised, extra=extra)
