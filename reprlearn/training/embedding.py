"""The embedding driver: config → data → tower → loss → fit → evaluate → report.

Read it top to bottom; `run_embedding` is the whole job.

Example:
    from reprlearn.config import load_config
    report = run_embedding(load_config("configs/demo.yaml"), "runs/demo")
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

from reprlearn.config import Config
from reprlearn.data import ImageSet, Splits
from reprlearn.data.pipelines import pair_batches
from reprlearn.errors import ConfigError
from reprlearn.evaluation.scoring import (
    can_pair,
    pair_distances,
    pca_fit_sample,
    score_embeddings,
    validation_threshold,
)
from reprlearn.models import build_tower, initialise_from, project_joint_embedding
from reprlearn.models.towers import BACKBONE_NAME, set_backbone_trainable
from reprlearn.metrics import retrieval_metrics
from reprlearn.runs import HEAD_FILE, embed, load_run, run_summary, save_and_check_reload
from reprlearn.runs.inference import decoded_part
from reprlearn.runs.record import BAD_IMAGE_LOG, files_report
from reprlearn.training.loop import train_run
from reprlearn.training.objectives import (
    TOWER_NAME,
    RetrievalValidation,
    compile_embedding_model,
    embedding_model,
    is_pair_loss,
    pk_training_batches,
    tower_of,
)


def training_batches(cfg: Config, train: ImageSet, start_step: int, bad_image_log: str | None = None,
                     shard: tuple[int, int] | None = None):
    """Balanced pairs for pair losses, P×K batches for in-batch losses, starting at batch `start_step`; streamed
    files that fail to decode are listed in `bad_image_log`. `shard`: `(worker, workers)`, that worker's rows of
    each global batch only (P×K batches of classes from files decode only those rows' files)."""
    if is_pair_loss(cfg):
        return pair_batches(train, train.labels, cfg.train.pair_batch_size, cfg.train.seed, start_step,
                            bad_image_log, shard)
    return pk_training_batches(cfg, train, start_step, bad_image_log, shard)


def batch_size(cfg: Config) -> int:
    if is_pair_loss(cfg):
        return cfg.train.pair_batch_size
    return cfg.train.classes_per_batch * cfg.train.examples_per_class


def check_embedding_data(cfg: Config, splits: Splits) -> None:
    """Errors that need the data, raised before a run folder is made (embedding and verifier runs)."""
    if cfg.model.init_from and not (Path(cfg.model.init_from) / "model.keras").is_file():
        raise ConfigError(f"model.init_from must name a finished run folder (with model.keras). "
                         f"Received: model.init_from={cfg.model.init_from!r}")
    pk_batches = cfg.model.kind == "embedding" and not is_pair_loss(cfg)
    drawn, available = ((len(splits.train), "training images") if cfg.data.positives == "views" else
                        (len(splits.train_classes), "training classes"))
    if pk_batches and cfg.train.classes_per_batch > drawn:
        raise ConfigError(f"train.classes_per_batch exceeds the {drawn} {available}. "
                         f"Received: train.classes_per_batch={cfg.train.classes_per_batch}")


def pretrained_layers(cfg: Config, tower: keras.Model) -> list[str]:
    """The layers that train at `model.init_learning_rate_factor` of the rate: a pretrained backbone's."""
    if cfg.model.tower != "backbone" or cfg.model.backbone_weights in (None, "none"):
        return []
    base = find_layer(tower, BACKBONE_NAME)
    return [BACKBONE_NAME] + [layer.name for layer in base.layers]


def find_layer(model: keras.Model, name: str):
    """The layer called `name` in `model` or in a model nested in it."""
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = find_layer(layer, name)
            if found is not None:
                return found
    return None


def carry_weights(old: keras.Model, new: keras.Model) -> None:
    """Copies the weights of `old`'s layers into `new`'s layers of the same name and shapes (a recompiled training
    model keeps its classifier head; the tower's layers are shared already)."""
    by_name = {layer.name: layer for layer in old.layers}
    for layer in new.layers:
        match = by_name.get(layer.name)
        if match is not None and match is not layer and layer.weights and (
                [tuple(w.shape) for w in match.weights] == [tuple(w.shape) for w in layer.weights]):
            layer.set_weights(match.get_weights())


def capped(cfg: Config, model: keras.Model, train: ImageSet) -> keras.Model:
    """The joint embedding with `model.joint_dim` components at most: a PCA fit on training images only."""
    if not cfg.model.joint_layers or cfg.model.joint_dim is None:
        return model
    return project_joint_embedding(model, embed(model, pca_fit_sample(train, cfg.data.seed)),
                                   cfg.model.joint_dim)


def evaluate(cfg: Config, tower: keras.Model, splits: Splits) -> dict:
    """Retrieval on the test protocol beside raw pixels (L2 and cosine) and their PCA at the embedding's size (fit
    on training images), and verification on test pairs.

    The verification threshold is calibrated on validation pairs (training side) and only applied to
    the test pairs: no test data in any fitted number.
    """
    metric, seed = cfg.loss.distance, cfg.data.seed
    test, embeddings, failed = decoded_part(tower, splits.test)
    val, val_embeddings, val_failed = decoded_part(tower, splits.val)
    val_distances, val_match = (pair_distances(val_embeddings, val.labels, cfg.eval.verification_pairs,
                                               metric, seed) if can_pair(val.labels) else (None, None))
    threshold, calibration = validation_threshold(val_distances, val_match)
    metrics, pairs = score_embeddings(embeddings, test, test.labels, metric, threshold,
                                      cfg.eval.verification_pairs, seed, pca_train_images=splits.train)
    metrics["verification"]["calibration"] = calibration
    if failed or val_failed:
        metrics["skipped_files"] = failed + val_failed
    return {"metrics": metrics, "embeddings": embeddings, "pairs": pairs, "test": test}


def score_head(cfg: Config, head: keras.Model, test: ImageSet) -> dict:
    """The tower's own head on the scored test items: MAP@R, R-precision and P@1 under the run's distance."""
    scores = retrieval_metrics(embed(head, test), test.labels, cfg.loss.distance, compute_nmi=False,
                               seed=cfg.data.seed)
    return {**scores, "dim": int(head.output_shape[-1])}


def run_embedding(cfg: Config, out: Path, splits: Splits, verbose: int = 1,
                  callbacks: list[keras.callbacks.Callback] | None = None,
                  strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains, evaluates and reports an embedding run in an opened run folder (see `reprlearn.training`)."""
    # Model: a fresh tower, or the checkpoint of an interrupted run (weights and optimizer state),
    # made under the strategy; batches are global batches, split over the replicas by the loop.
    strategy = strategy or tf.distribute.get_strategy()
    initialised = {}

    def build():
        tower = build_tower(cfg.model, splits.train.image_shape, name=TOWER_NAME, streamed=splits.train.streamed,
                            frozen=cfg.train.frozen_epochs > 0)
        if cfg.model.init_from:  # a transfer: start from another run's tower (a checkpoint, if any, loads over it)
            initialised.update(run=cfg.model.init_from, frozen=cfg.model.freeze,
                               learning_rate_factor=cfg.model.init_learning_rate_factor,
                               layers=initialise_from(tower, load_run(cfg.model.init_from).model, cfg.model.freeze))
        return compile_embedding_model(cfg, tower, len(splits.train.classes),
                                       initialised.get("layers", ()) or pretrained_layers(cfg, tower))

    def unfreeze(model):
        # After train.frozen_epochs: the backbone trains from model.fine_tune_from, with a fresh optimizer.
        tower = tower_of(model)
        base = find_layer(model, BACKBONE_NAME)
        set_backbone_trainable(base, cfg.model.fine_tune_from or "all", cfg.model.freeze_batchnorm)
        recompiled = compile_embedding_model(cfg, tower, len(splits.train.classes), pretrained_layers(cfg, tower))
        carry_weights(model, recompiled)
        return recompiled

    def validation(model):
        # Validation (and the epoch `train.keep: best` selects) scores the embedding the run exports.
        return RetrievalValidation(embedding_model(cfg, tower_of(model)), splits.val, splits.val.labels,
                                   cfg.loss.distance)

    bad_image_log = str(out / BAD_IMAGE_LOG) if splits.train.streamed else None
    trained = train_run(out, cfg, strategy, build,
                        lambda model, start: training_batches(cfg, splits.train, start, bad_image_log),
                        validation, callbacks, verbose, unfreeze if cfg.model.tower == "backbone" else None,
                        lambda model, start, worker, workers: training_batches(cfg, splits.train, start,
                                                                               bad_image_log, (worker, workers)))
    if trained is None:  # a worker other than the chief: the chief writes the run
        return {}
    exported = embedding_model(cfg, tower_of(trained.model))  # the same layers and weights validation scored
    for layer in exported.layers:  # frozen for the transfer only: the saved tower is an ordinary, trainable one
        layer.trainable = True
    if is_pair_loss(cfg):
        trained.model.save(out / "pair_model.keras")
    return report_embedding(cfg, out, splits, trained, exported, batch_size(cfg),
                            head=tower_of(trained.model) if cfg.model.joint_layers else None,
                            initialised=initialised)


def model_record(cfg: Config, tower: keras.Model, initialised: dict | None = None) -> dict:
    """The report's `model` section of a run that keeps one tower (saved and proven to reload identically)."""
    return {"tower": cfg.model.tower, "embedding_dim": int(tower.output_shape[-1]),
            "parameters": int(tower.count_params()), "reload_max_abs_diff": 0.0,
            **({"initialised_from": initialised} if initialised else {})}


def report_embedding(cfg: Config, out: Path, splits: Splits, trained, exported: keras.Model, images_per_batch: int,
                     head: keras.Model | None = None, initialised: dict | None = None,
                     extra: dict | None = None) -> dict:
    """Saves the tower a run exports, proves it reloads, evaluates it on the test protocol and writes the report:
    the common end of every run that keeps one embedding tower (`trained`: the loop's `Trained`)."""
    from reprlearn.evaluation.report import write_report  # plotting stays out of the import path of library users

    # Save the embedding model (uncompiled) and prove it reloads to identical embeddings; evaluate that file.
    tower = save_and_check_reload(capped(cfg, exported, splits.train), out / "model.keras", splits.test)
    # A joint embedding serves classes the tower never saw; its head serves the ones it trained on. Both come
    # from one tower, so a joint run keeps the head too (HEAD_FILE; the SavedModel's `embed_head`).
    if head is not None:
        head = save_and_check_reload(head, out / HEAD_FILE, splits.test)

    # Evaluate and report.
    evaluation = evaluate(cfg, tower, splits)
    if head is not None:
        evaluation["metrics"]["head"] = score_head(cfg, head, evaluation["test"])
    report = {**run_summary(cfg, out, trained.epochs_done, trained.seconds, trained.history, images_per_batch),
              "kept": trained.kept,
              "model": model_record(cfg, tower, initialised),
              "metrics": evaluation["metrics"],
              **(extra or {}),
              **files_report(splits, out)}
    write_report(report, out, splits, evaluation, cfg)
    return report
