"""The run folder as a record: what made it, the check that a re-run is the same run, checkpoint state, the summary.

A run folder holds:

    config.yaml        the resolved config, headed by the command that ran it
    run.json           the record: package versions, data source (name, split sizes, classes,
                       fingerprints of the arrays), the ranking metric, the model kind
    evaluation.npz     the validation and test arrays the run was scored on (for streamed file sources:
                       their paths, sizes and mtimes, never pixels), and a sample of
                       training images (TFLite calibration), so export and re-scoring never
                       re-derive the data from a dataset name. Arrays from the Python API are
                       always kept; a named dataset whose arrays exceed EVALUATION_LIMIT_BYTES
                       (large image folders) keeps only the sample, and `load_run` reloads the
                       rest from the recorded source and refuses if their fingerprints changed
    checkpoints/       last.keras (weights, optimizer, compile state) and state.json
                       (written by `reprlearn.training.loop` after each epoch)
    model.keras        the embedding model alone, uncompiled: loads with `import reprlearn`
                       (or Keras alone when it holds only Keras layers)
    head.keras         joint-embedding runs only: the same tower ending in its own head (the
                       embedding for the classes it trained on; model.keras is for the others)

Example:
    out = open_run(cfg, "runs/demo", splits, from_arrays=False, command=None, metric="L2", kind="embedding",
                   resume=False, force=False)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from reprlearn._version import __version__
from reprlearn.config import Config, config_from_dict, config_to_dict, save_config
from reprlearn.data import ImageSet, Splits
from reprlearn.data.pairs import PairSet, PairSplits
from reprlearn.errors import RunFolderError

RECORD_FILE = "run.json"
EVALUATION_FILE = "evaluation.npz"
HEAD_FILE = "head.keras"
QUERY_FILE, REFERENCE_FILE = "query.keras", "reference.keras"   # a two-tower run's towers
CHECKPOINTS = "checkpoints"
REPRESENTATIVE_IMAGES = 200
EVALUATION_LIMIT_BYTES = 256 * 2**20
# Streamed files that failed to decode during training, one path per line (appended by the pipelines).
BAD_IMAGE_LOG = "skipped_images.log"


def files_report(splits: Splits, out: Path) -> dict:
    """For a run on files: what indexing left out and what failed to decode while training (report.json)."""
    if not splits.train.streamed:
        return {}
    record = splits.train.source_record or {}
    log = out / BAD_IMAGE_LOG
    during = sorted({line for line in log.read_text().splitlines() if line}) if log.is_file() else []
    return {"files": {"items": record.get("items"), "classes": record.get("classes"),
                      "skipped_when_indexed": record.get("skipped", []), "ignored_files": record.get("ignored_files"),
                      "dropped_classes": record.get("dropped_classes", []), "skipped_in_training": during}}


def fingerprint(imageset: ImageSet) -> str:
    """A SHA-256 prefix of the images' and labels' bytes: equal arrays, equal fingerprint. A streamed set's is
    its files' (path, size, mtime, label) rows: no pixel is read."""
    if imageset.streamed:
        return imageset.files.fingerprint(imageset.labels)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(imageset.images).tobytes())
    digest.update(np.ascontiguousarray(imageset.labels.astype(np.int64)).tobytes())
    return digest.hexdigest()[:16]


def pair_fingerprint(pairs: PairSet) -> str:
    """Both views' fingerprints in one: a pair, file, label or pixel changed on either side changes it."""
    return hashlib.sha256(f"{fingerprint(pairs.query)}|{fingerprint(pairs.reference)}|"
                          f"{pairs.reference_keys.tobytes().hex()}".encode()).hexdigest()[:16]


def _pair_data_record(cfg: Config, splits: PairSplits, from_arrays: bool) -> dict:
    return {
        "source": "arrays passed to the Python API" if from_arrays else f"pairs {cfg.data.name!r}",
        "name": "arrays" if from_arrays else cfg.data.name,
        "data_dir": None, "protocol": "matched pairs", "train_classes": [], "test_classes": [], "class_names": [],
        "image_shape": list(splits.train.query.image_shape),
        "reference_shape": list(splits.train.reference.image_shape),
        "labelled": bool(splits.train.labelled), "skipped_pairs": splits.skipped,
        "splits": {name: {"n": len(part), "places": int(len(np.unique(part.labels))),
                          "fingerprint": pair_fingerprint(part)}
                   for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test))},
    }


def data_record(cfg: Config, splits: Splits | PairSplits, from_arrays: bool) -> dict:
    """The data section of the record: where the arrays came from and what each split holds."""
    if isinstance(splits, PairSplits):
        return _pair_data_record(cfg, splits, from_arrays)
    return {
        "source": "arrays passed to the Python API" if from_arrays else f"dataset {cfg.data.name!r}",
        "name": "arrays" if from_arrays else cfg.data.name,
        "data_dir": None if from_arrays else cfg.data.data_dir,
        "protocol": cfg.data.protocol,
        "train_classes": splits.train_classes, "test_classes": splits.test_classes,
        "class_names": list(splits.train.class_names), "classes_left_out": splits.classes_left_out,
        "image_shape": list(splits.train.image_shape),
        **({"files": {**splits.train.source_record, "root": splits.train.files.root}}
           if splits.train.streamed and splits.train.source_record else {}),
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
             metric: str, kind: str, resume: bool = False, force: bool = False, verbose: int = 1) -> Path:
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
        verbose: say so when only `eval` keys changed (the run is re-evaluated, not retrained).

    Raises:
        RunFolderError: the folder holds a run made by another config or other data (the message lists
            every differing key), `resume` without a run, or a non-empty folder that is not a run.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"the run folder is a file. Received: out={str(out)!r}")
    record = {"reprlearn_version": __version__, "keras_version": keras.__version__,
              "tensorflow_version": _tensorflow_version(), "python": sys.version.split()[0],
              "command": command, "kind": kind, "metric": metric, "data": data_record(cfg, splits, from_arrays)}
    if force:
        remove_run(out)
    if out.is_dir() and _is_run_folder(out):
        changed_eval = _check_same_run(out, cfg, record["data"])
        if changed_eval:  # the same training: re-evaluate its kept weights with the new eval keys, no training
            if verbose:
                print(f"{out}: only eval keys changed ({'; '.join(changed_eval)}): re-evaluating the trained "
                      "model, no training", flush=True)
            save_config(cfg, out / "config.yaml", command)
            set_state(out, "running")
        return out
    if resume:
        raise RunFolderError(f"--resume: there is no run to continue in {out}. Received: out={str(out)!r}")
    if out.is_dir() and any(out.iterdir()):
        raise RunFolderError(f"{out} is not empty and holds no reprlearn run; pick an empty or new folder. "
                             f"Received: out={str(out)!r}")
    staging = out.with_name(f".{out.name}.creating")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as error:  # name the user's path, not the staging folder beside it
        why = ("a folder on its path is a file" if isinstance(error, (FileExistsError, NotADirectoryError))
               else error.strerror or str(error))
        raise RunFolderError(f"cannot make the run folder {out}: {why}. Received: out={str(out)!r}") from None
    save_config(cfg, staging / "config.yaml", command)
    record["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["state"] = "running"
    write_json_atomic(staging / RECORD_FILE, record)
    np.savez_compressed(staging / EVALUATION_FILE, **_evaluation_arrays(cfg, splits, from_arrays))
    if out.is_dir():
        out.rmdir()
    os.replace(staging, out)  # the folder appears whole or not at all
    return out


def _evaluation_arrays(cfg: Config, splits: Splits | PairSplits, from_arrays: bool) -> dict:
    """What evaluation.npz holds: a sample of training images (both views' for pairs: TFLite calibration), and the
    test and validation arrays or file rows of a one-view run."""
    rng = np.random.default_rng(cfg.data.seed)
    sample = np.sort(rng.choice(len(splits.train), min(REPRESENTATIVE_IMAGES, len(splits.train)), replace=False))
    if isinstance(splits, PairSplits):
        return {"train_sample": splits.train.query.pixels(sample),
                "train_sample_reference": splits.train.reference.pixels(sample),
                **_pair_arrays("test", splits.test), **_pair_arrays("val", splits.val)}
    if splits.test.streamed:  # the files, as indexed: load_run rebuilds the sets and names any file changed since
        held = {f"{name}_{field}": values for name, part in (("test", splits.test), ("val", splits.val))
                for field, values in (("keys", part.files.relative.astype(str)), ("labels", part.labels),
                                      ("sizes", part.files.sizes), ("mtimes", part.files.mtimes))}
        held["files_root"] = np.array(splits.test.files.root)
    else:
        held = {"test_images": splits.test.images, "test_labels": splits.test.labels,
                "val_images": splits.val.images, "val_labels": splits.val.labels}
        if not from_arrays and sum(a.nbytes for a in held.values()) > EVALUATION_LIMIT_BYTES:
            held = {}  # reloaded from the recorded dataset by `load_run`, fingerprints checked
    return {"train_sample": splits.train.pixels(sample), **held}


def _pair_arrays(name: str, pairs: PairSet) -> dict:
    """A split's matched pairs as evaluation.npz keeps them (`load_run` rebuilds the `PairSet`): labels, place
    names and reference keys, and per view its file rows (root, paths, sizes, mtimes) or its pixels."""
    held = {f"{name}_labels": pairs.labels, f"{name}_reference_keys": pairs.reference_keys,
            f"{name}_class_names": np.array(pairs.query.class_names, dtype=str)}
    for view in ("query", "reference"):
        images = getattr(pairs, view)
        if images.streamed:
            held.update({f"{name}_{view}_root": np.array(images.files.root),
                         f"{name}_{view}_keys": images.files.relative.astype(str),
                         f"{name}_{view}_sizes": images.files.sizes, f"{name}_{view}_mtimes": images.files.mtimes})
        else:
            held[f"{name}_{view}_images"] = images.images
    return held


# Config keys that say how a run is computed, not what: changing one never makes it another run.
RUNTIME_ONLY_KEYS = ("data.cache:",)


def _check_same_run(out: Path, cfg: Config, data: dict) -> list[str]:
    """RunFolderError listing every key and split where the run in `out` differs from `cfg` and `data`, unless
    only `eval.*` keys differ (what is scored and drawn, not what is trained): then those differences."""
    stored = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").is_file() else {}
    # Where decoded images are cached changes no number a run computes: a run continues under another data.cache.
    differences = [difference for difference in config_differences(config_to_dict(config_from_dict(stored)),
                                                                     config_to_dict(cfg))
                   if not difference.startswith(RUNTIME_ONLY_KEYS)]
    old_prints = {name: split.get("fingerprint") for name, split
                  in read_json(out / RECORD_FILE).get("data", {}).get("splits", {}).items()}
    differences += [f"data: the {name} split's arrays differ (fingerprint {old_prints.get(name)} → "
                    f"{split['fingerprint']})" for name, split in data["splits"].items()
                    if old_prints.get(name) != split["fingerprint"]]
    if differences and all(difference.startswith("eval.") for difference in differences):
        return differences
    if differences:
        raise RunFolderError(
            f"{out} holds a run made by a different config or data, so it cannot be continued: "
            + "; ".join(differences) + ". Use another --out, or --force to delete that run and start over")
    return []


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


# A run's state in run.json: running (training or evaluating, or interrupted), complete (its report is written),
# failed (an error after the folder was made; `failure` says which). Runs made before states existed have none:
# complete if they hold a report.
STATES = ("running", "complete", "failed")


def run_state(out_dir: str | Path, record: dict | None = None) -> tuple[str, str | None]:
    """`(state, failure message or None)` of the run in a folder (from `record`, its run.json, when already read)."""
    out = Path(out_dir)
    record = read_json(out / RECORD_FILE) if record is None else record
    default = "complete" if (out / "report.json").is_file() else "running"
    return record.get("state", default), record.get("failure")


def set_state(out_dir: str | Path, state: str, failure: str | None = None) -> None:
    """Records a run's state in run.json (atomically), with the failure's message for `failed`."""
    if state not in STATES:
        raise ValueError(f"state must be one of {list(STATES)}. Received: state={state!r}")
    path = Path(out_dir) / RECORD_FILE
    record = {key: value for key, value in read_json(path).items() if key != "failure"}
    write_json_atomic(path, {**record, "state": state, **({"failure": failure} if failure else {})})


def _tensorflow_version() -> str:
    import tensorflow as tf
    return tf.__version__


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_checkpoint_state(directory: Path) -> dict:
    path = directory / "state.json"
    return json.loads(path.read_text()) if path.is_file() and (directory / "last.keras").is_file() else {}


def run_summary(cfg: Config, out: Path, epochs_done: int, seconds: float, history: list[dict], batch: int) -> dict:
    """The config, record, data and training sections every run report starts with.

    `seconds` is the run's whole training time, summed over every session that trained it (a resumed
    run counts its earlier sessions), and the rate is over all its epochs' examples.
    """
    record = read_json(out / RECORD_FILE)
    data = record["data"]
    epochs_run = cfg.train.epochs - epochs_done
    examples = cfg.train.epochs * cfg.train.steps_per_epoch * batch
    return {
        "config": config_to_dict(cfg),
        "record": {key: record.get(key) for key in ("reprlearn_version", "keras_version", "tensorflow_version",
                                                    "command", "kind", "metric", "created")},
        "data": {"name": data["name"], "source": data["source"], "protocol": data["protocol"],
                 "train_classes": data["train_classes"], "test_classes": data["test_classes"],
                 "classes_left_out": data.get("classes_left_out", []),
                 "n_train": data["splits"]["train"]["n"], "n_val": data["splits"]["val"]["n"],
                 "n_test": data["splits"]["test"]["n"], "image_shape": data["image_shape"]},
        "train": {"epochs": cfg.train.epochs, "epochs_this_session": epochs_run,
                  "resumed_from_epoch": epochs_done, "seconds": round(seconds, 2),
                  "examples_per_second": round(examples / seconds, 1) if examples and seconds > 0 else None,
                  "batch_size": batch, "steps_per_epoch": cfg.train.steps_per_epoch, "history": history},
    }
