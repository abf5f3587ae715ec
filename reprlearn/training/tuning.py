"""Keras Tuner on a retrieval objective: margin, embedding size, learning rate, loss, batch shape, and the
open-set keys (JRD and reconstruction weights, joint embedding layers, augmentation).

A loss value cannot compare trials with different margins or losses; the objective is a
retrieval metric (`val_map_at_r` by default) computed every epoch on a validation split drawn
from the training classes only. The test classes are never loaded into a trial.

Example:
    cfg = load_config("tuner/fashion_mnist_unseen.yaml")
    tuner = make_tuner(cfg, "bayesian", max_trials=12, directory="runs/tune")
    tuner.search()

Resuming and distribution are keras-tuner's own: a second run with the same directory
continues the search (an interrupted trial is retried), and the `KERASTUNER_TUNER_ID`,
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` variables make one process the chief
(the oracle) and the others workers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from pathlib import Path

import keras
import keras_tuner
import numpy as np

from reprlearn.config import Config, ConfigError, config_to_dict
from reprlearn.config.schema import TUNING_OBJECTIVES, TWO_TOWER_OBJECTIVES, LossConfig
from reprlearn.config.losses import LOSS_OPTIONS, LOSS_TRAITS, PK_LOSSES, SHARED_OPTIONS
from reprlearn.data import Splits
from reprlearn.data.pairs import PairSplits
from reprlearn.data.pipelines import matched_pair_batches
from reprlearn.models import build_tower
from reprlearn.models.joint import ORIENTATIONS, check_tower_layers
from reprlearn.models.two_tower import towers_of
from reprlearn.training.objectives import (
    TOWER_NAME,
    RetrievalValidation,
    compile_embedding_model,
    embedding_model,
    pk_training_batches,
    tower_of,
)
from reprlearn.training.progress import progress
from reprlearn.training.strategies import check_global_batch, check_jit_compile, dtype_policy, make_strategy
from reprlearn.training.two_tower_objectives import CrossViewValidation, check_two_tower_data, compile_two_towers

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "search"
# Hyperparameters, each fixed to the config's own value when its search list is empty.
HYPERPARAMETERS = ("margin", "embedding_dim", "learning_rate", "loss", "classes_per_batch", "examples_per_class",
                   "jrd_weight", "reconstruction_weight", "joint_layers", "augment", "alpha", "gamma", "temperature")
# Searched only in the trials whose loss takes them (the keys its LOSS_TRAITS defaults list).
PER_LOSS = ("alpha", "gamma", "temperature")
JOINED = "+"  # a search.joint_layers choice: layer names joined by "+" (keras-tuner choices are scalars)


def joint_layer_choice(choice: str) -> list[str]:
    return [name for name in choice.split(JOINED) if name]


def check_search_space(cfg: Config) -> None:
    """A search that lists something, scored on an objective its validation callback logs (before any data)."""
    two_tower = cfg.model.kind == "two_tower"
    if not any(getattr(cfg.search, name) for name in HYPERPARAMETERS):
        raise ConfigError(f"config: the search section lists no hyperparameter to search; give at least one of "
                          f"{list(HYPERPARAMETERS)} a range or choices. Received: search="
                          f"{ {name: getattr(cfg.search, name) for name in HYPERPARAMETERS} }")
    objectives = TWO_TOWER_OBJECTIVES if two_tower else tuple(o for o in TUNING_OBJECTIVES
                                                               if o not in TWO_TOWER_OBJECTIVES)
    if cfg.search.objective not in objectives:
        kind = "two-tower" if two_tower else "one-tower"
        raise ConfigError(f"config: a {kind} search scores its trials on {list(objectives)}; set search.objective "
                          f"to one of them. Received: search.objective={cfg.search.objective!r}")
    losses = cfg.search.loss or [cfg.loss.name]
    for key in PER_LOSS:
        if getattr(cfg.search, key) and not any(key in LOSS_TRAITS[name].defaults for name in losses):
            takers = [name for name, traits in LOSS_TRAITS.items() if key in traits.defaults]
            raise ConfigError(f"config: search.{key} applies to {takers}, and no loss of the search takes it. "
                              f"Received: search.{key}={getattr(cfg.search, key)!r}, losses={losses}")
    if cfg.train.strategy == "multi_worker":
        raise ConfigError("config: reprlearn tune runs each trial in one process (one_device or mirrored); to "
                          "spread a search over processes or hosts use keras-tuner's chief/worker mode "
                          "(tuner/launch_distributed.sh). Received: train.strategy='multi_worker'")


def check_two_tower_search(cfg: Config, splits: PairSplits) -> None:
    """A two-tower search's space and objective, and the pair batches its training places can fill."""
    check_search_space(cfg)
    check_two_tower_data(cfg, splits)


def check_search(cfg: Config, splits: Splits) -> None:
    """An empty search space, and errors that need the data: batch shapes the training classes cannot fill."""
    check_search_space(cfg)
    classes = len(splits.train_classes)
    too_many = [p for p in (cfg.search.classes_per_batch or [cfg.train.classes_per_batch]) if p > classes]
    if too_many:
        raise ConfigError(f"config: search.classes_per_batch exceeds the {classes} training classes. "
                          f"Received: search.classes_per_batch={cfg.search.classes_per_batch or too_many}")
    spec = LOSS_TRAITS[cfg.loss.name]
    if spec.batch != "pk":
        raise ConfigError(f"config: reprlearn tune trains on P×K batches: loss.name must be one of "
                          f"{list(PK_LOSSES)}. Received: loss.name={cfg.loss.name!r}")
    if cfg.search.jrd_weight and not spec.classifier:
        raise ConfigError(f"config: search.jrd_weight needs a classifier base loss (loss.name: am_softmax). "
                          f"Received: loss.name={cfg.loss.name!r}")
    tower = build_tower(cfg.model, splits.train.image_shape, streamed=splits.train.streamed)
    for choice in cfg.search.joint_layers:
        check_tower_layers(tower, joint_layer_choice(choice), "search.joint_layers", also=[ORIENTATIONS])
    strategy = make_strategy(cfg.train.strategy)
    check_jit_compile(cfg.train.jit_compile, strategy)
    replicas = strategy.num_replicas_in_sync
    for p in cfg.search.classes_per_batch or [cfg.train.classes_per_batch]:
        for k in cfg.search.examples_per_class or [cfg.train.examples_per_class]:
            check_global_batch(p * k, p, replicas)


def trial_config(cfg: Config, values: dict) -> Config:
    """The base config with one trial's hyperparameter values applied. A trial whose loss is not the config's takes
    that loss's own defaults (margin, scale, its per-loss keys) where the search does not set them."""
    loss = values.get("loss", cfg.loss.name)
    spec = LOSS_TRAITS[loss]
    own = loss == cfg.loss.name
    per_loss = {key: (getattr(cfg.loss, key) if own else spec.defaults.get(key)) for key in LOSS_OPTIONS}
    per_loss.update({key: float(values[key]) for key in PER_LOSS if key in values and key in spec.defaults})
    # Another loss's own margin and scale where it has them (Circle's m 0.4, ArcFace's s 64); the config's where it
    # reads them; the schema's default where it does not (a config must not carry a value its loss ignores).
    unread = LossConfig()
    base = dataclasses.replace(cfg.loss, **{
        key: spec.defaults.get(key, getattr(cfg.loss, key) if key in spec.reads else getattr(unread, key))
        for key in SHARED_OPTIONS}) if not own else cfg.loss
    reads_margin = "margin" in spec.reads or "margin" in spec.defaults
    joint_layers = joint_layer_choice(values["joint_layers"]) if "joint_layers" in values else cfg.model.joint_layers
    # The config's joint weights where they fit the trial's layers; otherwise every part weighs 1.
    joint_weights = cfg.model.joint_weights if len(cfg.model.joint_weights) == len(joint_layers) + 1 else []
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, augment=values.get("augment", cfg.data.augment)),
        model=dataclasses.replace(cfg.model, embedding_dim=int(values.get("embedding_dim", cfg.model.embedding_dim)),
                                  joint_layers=joint_layers, joint_weights=joint_weights),
        # A trial's loss keeps the config's distance and soft flag where it accepts them (the registry says).
        loss=dataclasses.replace(base, name=loss, margin=float(values["margin"]) if "margin" in values and reads_margin
                                 else base.margin, **per_loss,
                                 miner=cfg.loss.miner if spec.pairs else "none",
                                 distance=cfg.loss.distance if own else spec.defaults.get(
                                     "distance", cfg.loss.distance if cfg.loss.distance in spec.distances
                                     else spec.distances[0]),
                                 soft=cfg.loss.soft and spec.soft,
                                 # τ is learnt by the config's own InfoNCE only; another trial's loss keeps its own.
                                 learn_temperature=cfg.loss.learn_temperature and own,
                                 jrd_weight=float(values.get("jrd_weight", cfg.loss.jrd_weight)) if spec.classifier
                                 else 0.0,
                                 reconstruction_weight=float(values.get("reconstruction_weight",
                                                                        cfg.loss.reconstruction_weight))),
        train=dataclasses.replace(
            cfg.train, learning_rate=float(values.get("learning_rate", cfg.train.learning_rate)),
            classes_per_batch=int(values.get("classes_per_batch", cfg.train.classes_per_batch)),
            examples_per_class=int(values.get("examples_per_class", cfg.train.examples_per_class))))


def describe(values: dict) -> str:
    """`name=value, ...` for the hyperparameters of a trial, in declaration order."""
    return ", ".join(f"{name}={values[name]}" for name in HYPERPARAMETERS if name in values)


class RetrievalHyperModel(keras_tuner.HyperModel):
    """Builds a tower and loss from a config and a trial's hyperparameters; fits on P×K batches.

    `fit` is overridden so the batch composition (P classes × K examples) is a hyperparameter too.
    """

    def __init__(self, cfg: Config, splits: Splits, verbose: int = 1):
        super().__init__(name="reprlearn")
        self.cfg, self.splits, self.verbose = cfg, splits, verbose

    def declare(self, hp: keras_tuner.HyperParameters) -> dict:
        """Declares the search space on `hp` and returns this trial's values."""
        s, values = self.cfg.search, {}
        if s.margin:
            values["margin"] = hp.Float("margin", s.margin[0], s.margin[1], sampling="log")
        if s.embedding_dim:
            values["embedding_dim"] = hp.Choice("embedding_dim", s.embedding_dim)
        if s.learning_rate:
            values["learning_rate"] = hp.Float("learning_rate", s.learning_rate[0], s.learning_rate[1], sampling="log")
        if s.loss:
            values["loss"] = hp.Choice("loss", s.loss)
        if s.classes_per_batch:
            values["classes_per_batch"] = hp.Choice("classes_per_batch", s.classes_per_batch)
        if s.examples_per_class:
            values["examples_per_class"] = hp.Choice("examples_per_class", s.examples_per_class)
        for name in ("jrd_weight", "reconstruction_weight", "joint_layers", "augment"):
            if getattr(s, name):
                values[name] = hp.Choice(name, getattr(s, name))
        loss = values.get("loss", self.cfg.loss.name)
        for name in PER_LOSS:
            if getattr(s, name):
                takers = [n for n in (s.loss or [self.cfg.loss.name]) if name in LOSS_TRAITS[n].defaults]
                with hp.conditional_scope("loss", takers) if s.loss else contextlib.nullcontext():
                    low, high = getattr(s, name)
                    value = hp.Float(name, low, high, sampling="log")
                if loss in takers:
                    values[name] = value
        return values

    def build(self, hp):
        # keras-tuner calls this inside the scope of the tuner's distribution strategy (train.strategy).
        cfg = trial_config(self.cfg, self.declare(hp))
        keras.utils.set_random_seed(cfg.train.seed)
        with dtype_policy(cfg.train.mixed_precision):
            train = self.splits.train
            tower = build_tower(cfg.model, train.image_shape, name=TOWER_NAME, streamed=train.streamed)
            return compile_embedding_model(cfg, tower, len(train.classes))

    # What a trial reports (the validation callback logs them every epoch), the objective among them.
    SCORES = ("val_map_at_r", "val_precision_at_1")

    def training(self, cfg: Config, model) -> tuple:
        """`(batches, validation callback)` of one trial: P×K batches; the validation split scored as the trial
        would export it (the joint embedding when the trial has one)."""
        val = self.splits.val
        return pk_training_batches(cfg, self.splits.train), RetrievalValidation(
            embedding_model(cfg, tower_of(model)), val, val.labels, cfg.loss.distance)

    def fit(self, hp, model, *args, callbacks=None, **kwargs):
        cfg = trial_config(self.cfg, self.declare(hp))
        # The validation callback runs first, so keras-tuner's own callbacks see the objective in the logs.
        dataset, validation = self.training(cfg, model)
        epochs = kwargs.get("epochs", cfg.train.epochs)
        keras_verbose, progress_callbacks = progress(self.verbose, epochs)
        started = time.perf_counter()
        history = model.fit(dataset, epochs=epochs,
                            initial_epoch=kwargs.get("initial_epoch", 0), steps_per_epoch=cfg.train.steps_per_epoch,
                            callbacks=[validation, *progress_callbacks, *(callbacks or [])], verbose=keras_verbose,
                            shuffle=False)
        scores = history.history
        best = int(np.argmax(scores[cfg.search.objective]))
        print(f"Trial done on {os.environ.get('KERASTUNER_TUNER_ID', 'local')}: {describe(hp.values)} -> "
              f"{cfg.search.objective} {scores[cfg.search.objective][best]:.4f}", flush=True)
        return {**{name: float(scores[name][best]) for name in self.SCORES},
                "epochs": float(len(scores[cfg.search.objective])), "seconds": time.perf_counter() - started}


class TwoTowerHyperModel(RetrievalHyperModel):
    """Builds two towers and their pair loss from a config and a trial's hyperparameters; fits on batches of
    matched pairs of distinct places and scores the validation pairs' Recall@1 (queries → references)."""

    SCORES = TWO_TOWER_OBJECTIVES

    def build(self, hp):
        cfg = trial_config(self.cfg, self.declare(hp))
        keras.utils.set_random_seed(cfg.train.seed)
        train = self.splits.train
        with dtype_policy(cfg.train.mixed_precision):
            return compile_two_towers(cfg, train.query.image_shape, train.reference.image_shape, train.streamed)

    def training(self, cfg: Config, model) -> tuple:
        train = self.splits.train
        batches = matched_pair_batches(train.query, train.reference, cfg.train.pair_batch_size, cfg.train.seed, 0)
        return batches, CrossViewValidation(lambda: towers_of(model), self.splits.val, cfg.loss.distance)


def make_tuner(cfg: Config, splits: Splits | PairSplits, kind: str, max_trials: int, directory: str | Path,
               verbose: int = 1) -> keras_tuner.Tuner:
    """A keras-tuner tuner over `cfg.search`, resuming whatever `directory` already holds (a two-tower config's
    splits are `PairSplits`: its trials train two towers)."""
    if kind not in TUNERS:
        raise ConfigError(f"tuner must be one of {list(TUNERS)}. Received: tuner={kind!r}")
    if max_trials < 1:
        raise ConfigError(f"max_trials must be >= 1. Received: max_trials={max_trials}")
    two_tower = cfg.model.kind == "two_tower"
    (check_two_tower_search if two_tower else check_search)(cfg, splits)
    common = {"hypermodel": (TwoTowerHyperModel if two_tower else RetrievalHyperModel)(cfg, splits, verbose),
              "objective": keras_tuner.Objective(cfg.search.objective, direction="max"),
              "directory": str(directory), "project_name": PROJECT, "overwrite": False, "seed": cfg.train.seed,
              "distribution_strategy": make_strategy(cfg.train.strategy)}
    if kind == "random":
        return keras_tuner.RandomSearch(max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(max_trials=max_trials, **common)
    # Hyperband sizes its own brackets (and so its trial count) from max_epochs.
    return keras_tuner.Hyperband(max_epochs=cfg.train.epochs, **common)


def trial_rows(tuner: keras_tuner.Tuner) -> list[dict]:
    """One row per trial: id, status, hyperparameters, objective, epochs, seconds."""
    rows = []
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        def metric(name):
            return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None
        rows.append({"trial": trial.trial_id, "status": trial.status,
                     **{name: trial.hyperparameters.values.get(name) for name in HYPERPARAMETERS},
                     "objective": trial.score, "epochs": metric("epochs"), "seconds": metric("seconds")})
    return rows


def write_results(tuner: keras_tuner.Tuner, cfg: Config, out: Path) -> tuple[Config | None, list[dict]]:
    """Writes trials.csv, objective plots and best.yaml; returns the best trial's config and the rows."""
    from reprlearn.config import save_config
    from reprlearn.evaluation.figures import plot_objective

    rows = trial_rows(tuner)
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    done = [r for r in rows if r["objective"] is not None]
    if not done:
        return None, rows
    for name in ("margin", "embedding_dim"):
        if any(r[name] is not None for r in done):
            plot_objective(done, name, cfg.search.objective, out / f"objective_vs_{name}.png")
    best = max(done, key=lambda r: r["objective"])
    best_cfg = trial_config(cfg, {k: v for k, v in best.items() if k in HYPERPARAMETERS and v is not None})
    # The final model trains on every training class; held-out validation classes were for the search only.
    best_cfg = dataclasses.replace(best_cfg, data=dataclasses.replace(best_cfg.data, validation_classes=0))
    save_config(best_cfg, out / "best.yaml", f"reprlearn train {out / 'best.yaml'} --out {out / 'best_run'}")
    (out / "best.json").write_text(json.dumps({"trial": best["trial"], "objective": best["objective"],
                                               "hyperparameters": {k: best[k] for k in HYPERPARAMETERS},
                                               "config": config_to_dict(best_cfg)}, indent=2))
    return best_cfg, rows
