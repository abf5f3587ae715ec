"""`run_training`: the entry point that checks the input, opens the run folder and hands it to the embedding,
autoencoder or verifier driver.

Example:
    from reprlearn.config import load_config
    from reprlearn.training import run_training
    report = run_training(load_config("configs/demo.yaml"), "runs/demo")
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import keras
import numpy as np

from reprlearn.config import Config
from reprlearn.data import ImageSet, splits_for
from reprlearn.data.imageset import is_unlabelled
from reprlearn.data.cache import cache_decoded
from reprlearn.data.pairs import pair_splits_for
from reprlearn.errors import ConfigError, DataError
from reprlearn.evaluation.scoring import can_pair
from reprlearn.models.budget import available_memory_bytes, tower_size, training_bytes
from reprlearn.models.verifiers import VERIFIER_SCORE
from reprlearn.runs import CHECKPOINTS, open_run, read_checkpoint_state, wait_for_run
from reprlearn.runs.lock import run_lock
from reprlearn.runs.record import read_json, run_state, set_state
from reprlearn.training.autoencoder import CODE_METRIC, run_autoencoder
from reprlearn.training.embedding import batch_size, check_embedding_data, run_embedding
from reprlearn.training.objectives import is_pair_loss
from reprlearn.training.strategies import check_global_batch, check_jit_compile, is_chief, make_strategy
from reprlearn.training.self_supervised import check_self_supervised_data, run_self_supervised
from reprlearn.training.two_tower import run_two_tower
from reprlearn.training.two_tower_objectives import check_two_tower_data
from reprlearn.training.verifier import run_verifier


def check_evaluation_splits(splits) -> None:
    """Evaluation needs test pairs of both kinds and a query with another item of its class, and so does a
    validation split, where there is one (its score picks the kept epoch, its pairs the threshold): refused
    before any training, not after it."""
    for name, part, keys in (("test", splits.test, "data.max_test and data.train_classes"),
                             ("validation", splits.val, "data.validation_fraction and data.validation_classes "
                                                        "(0 for no validation split)")):
        if (name == "validation" and len(part) == 0) or can_pair(part.labels):
            continue
        counts = np.unique(part.labels, return_counts=True)[1]
        raise DataError(f"the {name} split needs two classes and a class with two items (for retrieval queries "
                        f"and verification pairs); check {keys}. Received: {len(part)} {name} items in "
                        f"{len(counts)} classes, the largest of {int(counts.max(initial=0))}")


def check_embedding_size(cfg: Config, image_shape, streamed: bool = False) -> None:
    """An embedding with more values than the image it encodes (after a backbone's resize) compresses nothing:
    refused as the slip it almost always is (an extra zero)."""
    height, width, channels = (int(v) for v in image_shape)
    if cfg.model.tower == "backbone" and not streamed:  # arrays are resized inside the tower
        height = width = cfg.model.backbone_image_size
        channels = 3
    values = height * width * channels
    if cfg.model.embedding_dim > values:
        raise ConfigError(f"config: model.embedding_dim is larger than the {values:,} values of each "
                          f"{height}×{width}×{channels} image it encodes, so it cannot compress them; use at most "
                          f"{values:,}. Received: model.embedding_dim={cfg.model.embedding_dim}")


def images_per_step(cfg: Config) -> int:
    """The images one training step embeds (both images of each pair for pair models)."""
    if cfg.model.kind in ("autoencoder", "vae"):
        return cfg.train.batch_size
    if cfg.model.kind == "self_supervised":
        return 2 * cfg.train.batch_size
    if cfg.model.kind in ("verifier", "two_tower"):
        return 2 * cfg.train.pair_batch_size
    return (2 if is_pair_loss(cfg) else 1) * batch_size(cfg)


def check_memory(cfg: Config, image_shape, images_per_step: int, towers: int = 1, streamed: bool = False) -> None:
    """Refuses, before anything is built, a run whose training step would not fit in the memory available now.

    `towers` counts the networks of the tower's size a step runs (2 for an autoencoder's encoder and
    decoder). The estimate (`reprlearn.models.budget`) is of the same order as the real use, not exact;
    it is there to stop a run that cannot fit before it fills the machine, not to fill it to the byte.
    """
    available, size = available_memory_bytes(), tower_size(cfg.model, image_shape, streamed)
    if size is None:  # a backbone without measured figures: not estimated
        return
    parameters, activations = size
    need = training_bytes(towers * parameters, towers * activations, images_per_step)
    if available is not None and need > available:
        raise ConfigError(f"a training step needs about {need / 2**30:.1f} GiB ({towers * parameters:,} parameters, "
                          f"{images_per_step} images of {towers * activations:,} activations each), and this machine "
                          f"has {available / 2**30:.1f} GiB available: use a smaller model (model.hidden, "
                          f"model.filters, model.dense, model.embedding_dim) or batch. Received: "
                          f"model.tower={cfg.model.tower!r}, model.embedding_dim={cfg.model.embedding_dim}")


def cached_splits(splits, cache: str):
    """The splits with their training and validation files decoded once (`data.cache`); files that fail to decode
    then are left out and listed with the files indexing skipped."""
    if cache in (None, "none") or not splits.train.streamed:
        return splits
    train, train_failed = cache_decoded(splits.train, cache)
    val, val_failed = cache_decoded(splits.val, cache)
    failed = [[name, "failed to decode when cached"] for name in train_failed + val_failed]
    if failed:
        record = {**train.source_record, "skipped": train.source_record["skipped"] + failed}
        for part in (train, val, splits.test):
            part.source_record = record
    return dataclasses.replace(splits, train=train, val=val)


def run_training(cfg: Config, out_dir: str | Path, sets: dict[str, ImageSet] | None = None,
                 command: str | None = None, verbose: int = 1,
                 callbacks: list[keras.callbacks.Callback] | None = None, resume: bool = False,
                 force: bool = False) -> dict:
    """Trains, evaluates and reports one run; continues an interrupted run of the same config and data.

    Args:
        cfg: a validated Config.
        out_dir: the run folder. Re-running the same config and data into it continues from the last
            finished epoch (or, for a complete run, changes nothing and returns its report); a different
            config or data is refused with the differing keys listed. One process at a time holds it.
        sets: loader-style splits to use instead of `cfg.data.name` (e.g. your own arrays via
            `reprlearn.data.make_imageset`); the record keeps their fingerprints and the run folder
            the evaluation arrays, so export and re-scoring use the same data.
        command: the command line, written at the top of the saved config.
        verbose: progress output (0 silent; 1: progress bars on a terminal, one line per epoch otherwise).
        callbacks: extra Keras callbacks, run after the validation, checkpoint and TensorBoard ones.
        resume: require an existing run to continue (an error if there is none).
        force: delete the run the folder holds and start over.

    Returns:
        The report dict also written to `out_dir/report.json` (a non-chief worker of a multi-worker
        run writes nothing and returns an empty dict).

    Raises:
        ConfigError, DatasetNotFoundError, ValueError, RunFolderError: bad input, before any folder is made.
    """
    # A multi-worker strategy must exist before TensorFlow runs anything else in the process.
    strategy = make_strategy(cfg.train.strategy)
    # All input checks come first, so bad data or a bad combination leaves no half-made folder.
    if cfg.model.kind == "two_tower":
        splits = pair_splits_for(cfg.data, sets)
        check_two_tower_data(cfg, splits)
        kind, metric = "two_tower", cfg.loss.distance
        check_global_batch(cfg.train.pair_batch_size, None, strategy.num_replicas_in_sync)
    else:
        splits = cached_splits(splits_for(cfg.data, sets), cfg.data.cache)
        if is_unlabelled(splits.train) and cfg.model.kind != "self_supervised":
            raise DataError(f"the data has no labels (a folder without class folders, a CSV without a label column, "
                            f"arrays given labels=None); a {cfg.model.kind} run learns from classes. Train on it "
                            f"without labels (model.kind: self_supervised), or add the labels. Received: "
                            f"data.name={cfg.data.name!r}")
    if cfg.model.kind == "embedding":
        check_embedding_data(cfg, splits)
        check_embedding_size(cfg, splits.train.image_shape, splits.train.streamed)
        kind, metric = ("pair" if is_pair_loss(cfg) else "embedding"), cfg.loss.distance
        check_global_batch(batch_size(cfg), None if is_pair_loss(cfg) else cfg.train.classes_per_batch,
                           strategy.num_replicas_in_sync)
    elif cfg.model.kind == "self_supervised":
        check_embedding_data(cfg, splits)
        check_embedding_size(cfg, splits.train.image_shape, splits.train.streamed)
        # The run keeps an ordinary embedding tower: every command downstream takes it as an embedding run.
        kind, metric = "embedding", cfg.loss.distance
        check_self_supervised_data(cfg, splits)
        check_global_batch(cfg.train.batch_size, None, strategy.num_replicas_in_sync)
    elif cfg.model.kind == "verifier":
        check_embedding_data(cfg, splits)
        kind, metric = "verifier", VERIFIER_SCORE
        check_global_batch(cfg.train.pair_batch_size, None, strategy.num_replicas_in_sync)
    elif cfg.model.kind != "two_tower":
        kind, metric = cfg.model.kind, CODE_METRIC
        check_global_batch(cfg.train.batch_size, None, strategy.num_replicas_in_sync)
    check_jit_compile(cfg.train.jit_compile, strategy)
    if cfg.model.kind == "two_tower":
        check_memory(cfg, splits.train.query.image_shape, images_per_step(cfg), towers=2,
                     streamed=splits.train.streamed)
    else:
        if not is_unlabelled(splits.train):  # without labels there is nothing to score, so nothing to check
            check_evaluation_splits(splits)
        check_memory(cfg, splits.train.image_shape, images_per_step(cfg),
                     towers=2 if cfg.model.kind in ("autoencoder", "vae") else 1, streamed=splits.train.streamed)
    driver = {"embedding": run_embedding, "verifier": run_verifier, "two_tower": run_two_tower,
              "self_supervised": run_self_supervised}.get(cfg.model.kind, run_autoencoder)
    if not is_chief(strategy):  # only the chief writes the run folder
        out = wait_for_run(cfg, out_dir, splits, sets is not None)
        keras.utils.set_random_seed(cfg.train.seed)
        return driver(cfg, out, splits, 0, None, strategy)
    with run_lock(out_dir, command):  # one process per run folder; a second one stops here, naming the first
        existed = Path(out_dir).is_dir() and any(Path(out_dir).iterdir())
        out = open_run(cfg, out_dir, splits, sets is not None, command, metric, kind, resume, force, verbose)
        if run_state(out)[0] == "complete":  # the same run, finished: change nothing, say where it is
            if verbose:
                print(f"{out} already holds this run, complete; nothing to do. Report: {out / 'report.md'}")
            return read_json(out / "report.json")
        set_state(out, "running")
        keras.utils.set_random_seed(cfg.train.seed)
        try:
            report = driver(cfg, out, splits, verbose, callbacks, strategy)
        except Exception as error:
            # A run that failed before its first finished epoch (a tower too deep for the images, ...) leaves
            # nothing; a later failure keeps its checkpoints, and the same command finishes the run from them.
            if not existed and not read_checkpoint_state(out / CHECKPOINTS):
                shutil.rmtree(out, ignore_errors=True)
            else:
                set_state(out, "failed", f"{type(error).__name__}: {error}")
            raise
        set_state(out, "complete")
        return report
