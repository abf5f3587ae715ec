"""The run folder as a record: what made it, how to resume it safely, and how to reload what it holds.

A run folder holds:

    config.yaml        the resolved config, headed by the command that ran it
    run.json           the record: package versions, data source (name, split sizes, classes,
                       fingerprints of the arrays), the ranking metric, the model kind
    evaluation.npz     the validation and test arrays the run was scored on, and a sample of
                       training images (TFLite calibration), so export and re-scoring never
                       re-derive the data from a dataset name. Arrays from the Python API are
                       always kept; a named dataset whose arrays exceed EVALUATION_LIMIT_BYTES
                       (large image folders) keeps only the sample, and `load_run` reloads the
                       rest from the recorded source and refuses if their fingerprints changed
    checkpoints/       last.keras (weights, optimizer, compile state) and state.json
                       (written by `reprlearn.training.loop` after each epoch)
    model.keras        the embedding model alone, uncompiled: loads with `import reprlearn`
                       (or Keras alone when it holds only Keras layers)

Training, tuning and export import this module; none of them imports another.

Example:
    run = load_run("runs/demo")
    run.config.loss.distance, run.record["data"]["splits"]["test"]["n"], run.evaluation["test_images"].shape
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import yaml

import reprlearn
from reprlearn.config import Config, config_from_dict, config_to_dict, save_config
from reprlearn.data import ImageSet, Splits, check_images
from reprlearn.distances import paired_distance
from reprlearn.index import Gallery, split_class_threshold

RECORD_FILE = "run.json"
EVALUATION_FILE = "evaluation.npz"
CHECKPOINTS = "checkpoints"
REPRESENTATIVE_IMAGES = 200
EVALUATION_LIMIT_BYTES = 256 * 2**20


class RunFolderError(ValueError):
    """A run folder cannot be used as asked: made by another config or other data, missing, or not a run."""


def embed(model: keras.Model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeds images (pixels 0-255) with a model, as float32 `[N, d]`.

    Calls the model batch by batch rather than `predict`, which under a multi-worker strategy is a
    collective step that every worker would have to join; this runs on the chief alone.
    """
    if len(images) == 0:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate([keras.ops.convert_to_numpy(model(images[start:start + batch_size].astype(np.float32),
                                                            training=False)).astype(np.float32)
                           for start in range(0, len(images), batch_size)])


def match_probabilities(model: keras.Model, images_a: np.ndarray, images_b: np.ndarray,
                        batch_size: int = 512) -> np.ndarray:
    """A verifier's `[N]` float32 probabilities that `images_a[i]` and `images_b[i]` show the same class (as `embed`,
    batch by batch on this process alone)."""
    if len(images_a) != len(images_b):
        raise ValueError(f"images_a and images_b must pair up one to one. Received: {len(images_a)} and "
                         f"{len(images_b)} images")
    if len(images_a) == 0:
        return np.zeros((0,), np.float32)
    return np.concatenate([
        keras.ops.convert_to_numpy(model([images_a[start:start + batch_size].astype(np.float32),
                                          images_b[start:start + batch_size].astype(np.float32)], training=False))
        .astype(np.float32).reshape(-1) for start in range(0, len(images_a), batch_size)])


def fingerprint(imageset: ImageSet) -> str:
    """A SHA-256 prefix of the images' and labels' bytes: equal arrays, equal fingerprint."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(imageset.images).tobytes())
    digest.update(np.ascontiguousarray(imageset.labels.astype(np.int64)).tobytes())
    return digest.hexdigest()[:16]


def data_record(cfg: Config, splits: Splits, from_arrays: bool) -> dict:
    """The data section of the record: where the arrays came from and what each split holds."""
    return {
        "source": "arrays passed to the Python API" if from_arrays else f"dataset {cfg.data.name!r}",
        "name": "arrays" if from_arrays else cfg.data.name,
        "data_dir": None if from_arrays else cfg.data.data_dir,
        "protocol": cfg.data.protocol,
        "train_classes": splits.train_classes, "test_classes": splits.test_classes,
        "class_names": list(splits.train.class_names),
        "image_shape": list(splits.train.images.shape[1:]),
        "splits": {name: {"n": len(part), "classes": part.classes, "fingerprint": fingerprint(part)}
                   for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))},
    }


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(stored: dict, current: dict) -> list[str]:
    """`key: stored → current` for every key whose value differs (nested keys dotted)."""
    old, new = _flatten(stored), _flatten(current)
    return [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def _is_run_folder(out: Path) -> bool:
    return (out / "config.yaml").is_file() or (out / RECORD_FILE).is_file()


def remove_run(out_dir: str | Path) -> None:
    """Deletes the run a folder holds (`--force`); a folder that holds no run is left alone."""
    out = Path(out_dir)
    if out.is_dir() and _is_run_folder(out):
        shutil.rmtree(out)


def open_run(cfg: Config, out_dir: str | Path, splits: Splits, from_arrays: bool, command: str | None,
             metric: str, kind: str, resume: bool = False, force: bool = False) -> Path:
    """Creates (or checks and re-opens) a run folder and writes its record; returns its path.

    Call it after the data is loaded and checked, so bad input leaves no folder behind.

    Args:
        cfg: the resolved config.
        out_dir: the run folder.
        splits: the run's data, recorded (sizes, classes, fingerprints) and saved for evaluation.
        from_arrays: the data came from the Python API rather than `cfg.data.name`.
        command: the command line, written at the top of config.yaml.
        metric: the distance the run ranks with (retrieval, export, galleries).
        kind: `embedding`, `pair`, `autoencoder`, `vae` or `verifier`.
        resume: require an existing run with the same config and data, and continue it.
        force: delete whatever run the folder holds and start over.

    Raises:
        RunFolderError: the folder holds a run made by another config or other data (the message lists
            every differing key), `resume` without a run, or a non-empty folder that is not a run.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"the run folder is a file. Received: out={str(out)!r}")
    record = {"reprlearn_version": reprlearn.__version__, "keras_version": keras.__version__,
              "tensorflow_version": _tensorflow_version(), "python": sys.version.split()[0],
              "command": command, "kind": kind, "metric": metric, "data": data_record(cfg, splits, from_arrays)}
    if force:
        remove_run(out)
    if out.is_dir() and _is_run_folder(out):
        _check_same_run(out, cfg, record["data"])
        return out
    if resume:
        raise RunFolderError(f"--resume: there is no run to continue in {out}. Received: out={str(out)!r}")
    if out.is_dir() and any(out.iterdir()):
        raise RunFolderError(f"{out} is not empty and holds no reprlearn run; pick an empty or new folder. "
                             f"Received: out={str(out)!r}")
    staging = out.with_name(f".{out.name}.creating")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_config(cfg, staging / "config.yaml", command)
    record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(staging / RECORD_FILE, record)
    rng = np.random.default_rng(cfg.data.seed)
    sample = rng.choice(len(splits.train), min(REPRESENTATIVE_IMAGES, len(splits.train)), replace=False)
    held = {"test_images": splits.test.images, "test_labels": splits.test.labels,
            "val_images": splits.val.images, "val_labels": splits.val.labels}
    if not from_arrays and sum(a.nbytes for a in held.values()) > EVALUATION_LIMIT_BYTES:
        held = {}  # reloaded from the recorded dataset by `load_run`, fingerprints checked
    np.savez_compressed(staging / EVALUATION_FILE, train_sample=splits.train.images[np.sort(sample)], **held)
    if out.is_dir():
        out.rmdir()
    os.replace(staging, out)  # the folder appears whole or not at all
    return out


def _check_same_run(out: Path, cfg: Config, data: dict) -> None:
    """RunFolderError listing every key and split where the run in `out` differs from `cfg` and `data`."""
    stored = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    differences = config_differences(config_to_dict(config_from_dict(stored)), config_to_dict(cfg))
    old_prints = {name: split.get("fingerprint") for name, split
                  in _read_json(out / RECORD_FILE).get("data", {}).get("splits", {}).items()}
    differences += [f"data: the {name} split's arrays differ (fingerprint {old_prints.get(name)} → "
                    f"{split['fingerprint']})" for name, split in data["splits"].items()
                    if old_prints.get(name) != split["fingerprint"]]
    if differences:
        raise RunFolderError(
            f"{out} holds a run made by a different config or data, so it cannot be continued: "
            + "; ".join(differences) + ". Use another --out, or --force to delete that run and start over")


def wait_for_run(cfg: Config, out_dir: str | Path, splits: Splits, from_arrays: bool,
                 timeout_s: float = 600.0) -> Path:
    """The read-only `open_run` of a non-chief worker: waits for the chief to open the folder, then checks it.

    Raises:
        RunFolderError: no run folder after `timeout_s`, or one made by another config or data.
    """
    out = Path(out_dir)
    deadline = time.monotonic() + timeout_s
    while not (out / RECORD_FILE).is_file():
        if time.monotonic() > deadline:
            raise RunFolderError(f"the chief worker opened no run in {out} within {timeout_s:.0f} s. "
                                 f"Received: out={str(out)!r}")
        time.sleep(0.2)
    _check_same_run(out, cfg, data_record(cfg, splits, from_arrays))
    return out


def _tensorflow_version() -> str:
    import tensorflow as tf
    return tf.__version__


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


@dataclass
class Run:
    """A finished (or interrupted) run folder, read back: its config, record and evaluation arrays, and its model.

    Example:
        run = load_run("runs/demo")
        embeddings = run.embed(images)                       # pixels 0-255, the run's image shape
        gallery = run.gallery(images, labels)                # enrolled with the run's metric and fingerprint
        run.verify(image_a, image_b)                         # {"distance", "threshold", "match"}
    """
    path: Path
    config: Config
    record: dict
    evaluation: dict
    _model: keras.Model | None = field(default=None, repr=False, compare=False)

    @property
    def metric(self) -> str:
        return self.record["metric"]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def report(self) -> dict:
        return _read_json(self.path / "report.json")

    @property
    def verification_threshold(self) -> float | None:
        """The match threshold the run fit on its validation pairs (report.json), or None."""
        return self.report.get("metrics", {}).get("verification", {}).get("threshold")

    @property
    def class_names(self) -> list[str]:
        return list(self.record["data"]["class_names"])

    @property
    def model(self) -> keras.Model:
        """`model.keras`, the embedding model (an autoencoder's encoder; a verifier's pair model), loaded once."""
        if self._model is None:
            self._model = keras.saving.load_model(self.path / "model.keras", compile=False)
        return self._model

    @property
    def model_fingerprint(self) -> str:
        """A SHA-256 prefix of `model.keras`: galleries record it, so one enrolled by another model is refused."""
        return hashlib.sha256((self.path / "model.keras").read_bytes()).hexdigest()[:16]

    def embed(self, images, batch_size: int = 512) -> np.ndarray:
        """`[N, d]` float32 embeddings of images (pixels 0-255) of the run's image shape; ValueError naming it."""
        if self.kind == "verifier":
            raise ValueError(f"a verifier run scores pairs of images (run.verify, `reprlearn verify`) and has no "
                             f"embedding to embed, enrol or export. Received: run kind 'verifier' ({self.path})")
        return embed(self.model, self._checked(images, "images"), batch_size)

    def _checked(self, images, name: str, single: bool = False) -> np.ndarray:
        """`images` (or one image) as the model's `[N, H, W, C]` input, or ValueError naming `name` and the shape."""
        given = np.asarray(images)
        batch = check_images(given[None] if single else given, name)
        expected = tuple(int(s) for s in self.model.inputs[0].shape[1:])
        if batch.shape[1:] != expected:
            want = ", ".join(map(str, expected)) if single else "N, " + ", ".join(map(str, expected))
            raise ValueError(f"{name} must be [{want}] for this run's model. Received: {name}.shape={given.shape}")
        return batch

    def gallery(self, images, labels, ids=None, backend: str = "exact", class_names=None) -> Gallery:
        """A gallery of these images, embedded by this run, ranked with its metric and marked with its fingerprint."""
        gallery = Gallery(self.metric, backend, self.model_fingerprint, class_names=class_names)
        gallery.add(self.embed(images), labels, ids)
        return gallery

    def rejection_threshold(self, far: float = 1e-3) -> float:
        """The open-set rejection distance for a false-accept rate `far`, fit on the validation split only.

        Half of the validation classes (drawn with `data.seed`) are enrolled and the other half act as
        impostors: the threshold lets at most `far` of the impostors match an enrolled item.
        """
        labels = self.evaluation["val_labels"]
        if len(np.unique(labels)) < 2:
            raise ValueError(f"the validation split needs two classes to calibrate a rejection threshold. "
                             f"Received: {len(np.unique(labels))} class in {self.path}")
        return split_class_threshold(self.embed(self.evaluation["val_images"]), labels, self.metric, far,
                                     self.config.data.seed)

    def verify(self, image_a, image_b) -> dict:
        """1:1 verification of two images: their distance, the run's threshold (fit on validation pairs) and
        the decision (None when the run has no threshold, e.g. an autoencoder).

        A verifier run's distance is 1 − its match probability (also returned, as `match_probability`).
        """
        image_a = self._checked(image_a, "image_a", single=True)
        image_b = self._checked(image_b, "image_b", single=True)
        threshold, extra = self.verification_threshold, {}
        if self.kind == "verifier":
            probability = float(match_probabilities(self.model, image_a, image_b)[0])
            distance, extra = 1.0 - probability, {"match_probability": probability}
        else:
            first, second = self.embed(np.concatenate([image_a, image_b]))
            distance = float(paired_distance(first[None], second[None], self.metric).numpy()[0])
        return {"distance": distance, "threshold": threshold, **extra,
                "match": None if threshold is None else bool(distance <= threshold)}


def load_run(run_dir: str | Path) -> Run:
    """Reads a run folder's config, record and evaluation arrays; RunFolderError if it is not a finished run."""
    path = Path(run_dir)
    missing = [name for name in ("config.yaml", RECORD_FILE, EVALUATION_FILE, "model.keras")
               if not (path / name).is_file()]
    if missing:
        raise RunFolderError(f"{path} is not a finished reprlearn run (missing {', '.join(missing)}). "
                             f"Received: run_dir={str(path)!r}")
    config = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    with np.load(path / EVALUATION_FILE) as arrays:
        evaluation = {name: arrays[name] for name in arrays.files}
    record = _read_json(path / RECORD_FILE)
    if "test_images" not in evaluation:
        evaluation.update(_reload_evaluation(config, record, path))
    return Run(path, config, record, evaluation)


def _reload_evaluation(config: Config, record: dict, path: Path) -> dict:
    """The validation and test arrays of a run that did not keep them, from its recorded dataset, checked."""
    from reprlearn.data import splits_for

    splits = splits_for(config.data)
    for name, part in (("val", splits.val), ("test", splits.test)):
        if fingerprint(part) != record["data"]["splits"][name]["fingerprint"]:
            raise RunFolderError(f"the {name} split of {record['data']['source']} has changed since {path} was "
                                 f"trained (fingerprint {fingerprint(part)}, recorded "
                                 f"{record['data']['splits'][name]['fingerprint']}); restore the data or retrain")
    return {"test_images": splits.test.images, "test_labels": splits.test.labels,
            "val_images": splits.val.images, "val_labels": splits.val.labels}


def inference_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights as a new, uncompiled Functional model: no loss, metrics or optimizer."""
    # A single input stays a single tensor (not a one-element list), so `model(images)` matches its structure.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
    return keras.Model(inputs, outputs, name=model.name)


def save_and_check_reload(model: keras.Model, path: Path, probe: np.ndarray, outputs=embed) -> keras.Model:
    """Saves `model` uncompiled, proves the file reloads to identical `outputs(model, probe)`, and returns the reload.

    The reloaded model lives outside any `tf.distribute` strategy, so the chief of a multi-worker run
    can evaluate it alone. The cross-process check (a fresh interpreter that imports only keras and
    reprlearn) is in the tests.
    """
    inference_copy(model).save(path)
    reloaded = keras.saving.load_model(path)
    reload_diff = float(np.max(np.abs(outputs(reloaded, probe) - outputs(model, probe))))
    if reload_diff != 0.0:
        raise RuntimeError(f"{path.name} reloads to different outputs (max abs diff {reload_diff})")
    return reloaded


class EpochLog(keras.callbacks.Callback):
    """One line per epoch (epoch, seconds, every logged value): the progress output when stdout is not a terminal."""

    def __init__(self, epochs: int, stream=None):
        super().__init__()
        self.epochs, self.stream, self.started = epochs, stream, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = " ".join(f"{name} {float(value):.4f}" for name, value in (logs or {}).items())
        print(f"epoch {epoch + 1}/{self.epochs} {time.perf_counter() - self.started:.1f}s {values}",
              file=self.stream or sys.stdout, flush=True)


def progress(verbose: int, epochs: int) -> tuple[int, list[keras.callbacks.Callback]]:
    """Keras' `verbose` and extra callbacks: progress bars on a terminal, one line per epoch otherwise."""
    if not verbose:
        return 0, []
    if sys.stdout.isatty():
        return 1, []
    return 0, [EpochLog(epochs)]


def read_checkpoint_state(directory: Path) -> dict:
    path = directory / "state.json"
    return json.loads(path.read_text()) if path.is_file() and (directory / "last.keras").is_file() else {}


def run_summary(cfg: Config, out: Path, epochs_done: int, seconds: float, history: list[dict], batch: int) -> dict:
    """The config, record, data and training sections every run report starts with."""
    record = _read_json(out / RECORD_FILE)
    data = record["data"]
    epochs_run = cfg.train.epochs - epochs_done
    examples = epochs_run * cfg.train.steps_per_epoch * batch
    return {
        "config": config_to_dict(cfg),
        "record": {key: record.get(key) for key in ("reprlearn_version", "keras_version", "tensorflow_version",
                                                    "command", "kind", "metric", "created")},
        "data": {"name": data["name"], "source": data["source"], "protocol": data["protocol"],
                 "train_classes": data["train_classes"], "test_classes": data["test_classes"],
                 "n_train": data["splits"]["train"]["n"], "n_val": data["splits"]["val"]["n"],
                 "n_test": data["splits"]["test"]["n"], "image_shape": data["image_shape"]},
        "train": {"epochs": cfg.train.epochs, "epochs_this_session": epochs_run,
                  "resumed_from_epoch": epochs_done, "seconds": round(seconds, 2),
                  "examples_per_second": round(examples / seconds, 1) if examples and seconds > 0 else None,
                  "batch_size": batch, "steps_per_epoch": cfg.train.steps_per_epoch, "history": history},
    }
