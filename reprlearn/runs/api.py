"""A finished run folder read back as a `Run`: its config, record, evaluation arrays and model, and what a user
does with them (embed, enrol a gallery, calibrate a rejection threshold, verify a pair).

Example:
    ```python
    run = load_run("runs/demo")
    run.config.loss.distance, run.record["data"]["splits"]["test"]["n"], run.evaluation["test_images"].shape
    ```
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import yaml

from reprlearn.config import Config, config_from_dict
from reprlearn.data import ImageSet, check_images
from reprlearn.ops.distances import paired_distance
from reprlearn.index import Gallery, GalleryError, split_class_threshold
from reprlearn.errors import DataError, RunFolderError
from reprlearn.runs.inference import SET_BATCH, embed, embed_set, match_probabilities
from reprlearn.runs.record import (
    EVALUATION_FILE,
    HEAD_FILE,
    QUERY_FILE,
    RECORD_FILE,
    REFERENCE_FILE,
    fingerprint,
    read_json,
    run_state,
)

EMBED_CHUNK = 65_536  # images embedded at a time where a whole set's embeddings need not be held
# The two sides of a search: what is asked (queries) and what a gallery holds (references). A one-tower run embeds
# both with its one model; a two-tower run (`TwoTowerRun`) with its query and reference towers.
VIEWS = ("query", "reference")


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise DataError(f"view must be one of {list(VIEWS)}. Received: view={view!r}")
    return view


@dataclass
class Run:
    """A complete run folder, read back: its config, record and evaluation arrays, and its model.

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
    _head: keras.Model | None = field(default=None, repr=False, compare=False)

    @property
    def metric(self) -> str:
        return self.record["metric"]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def report(self) -> dict:
        return read_json(self.path / "report.json")

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
    def head_model(self) -> keras.Model | None:
        """`head.keras`: a joint-embedding run's tower ending in its own head (the embedding for the classes it
        trained on), loaded once; None for other runs."""
        if self._head is None and (self.path / HEAD_FILE).is_file():
            self._head = keras.saving.load_model(self.path / HEAD_FILE, compile=False)
        return self._head

    @property
    def model_fingerprint(self) -> str:
        """A SHA-256 prefix of `model.keras`: galleries record it, so one enrolled by another model is refused."""
        return hashlib.sha256((self.path / "model.keras").read_bytes()).hexdigest()[:16]

    def tower(self, view: str = "query") -> keras.Model:
        """The model that embeds `view`'s images: for a one-tower run, `model` for both views."""
        check_view(view)
        return self.model

    @property
    def decoding(self):
        """How image files become this run's (query) input (its image size and channels, `data.resize`), for
        `load_spec` / `load_dataset` on new folders and file lists."""
        return self.decoding_for("query")

    def decoding_for(self, view: str):
        """How image files become the input of `view`'s tower (one tower: the same for both views)."""
        from reprlearn.data.loaders import Decoding

        key = "reference_shape" if check_view(view) == "reference" and "reference_shape" in self.record["data"] \
            else "image_shape"
        height, width, channels = self.record["data"][key]
        return Decoding((int(height), int(width)), int(channels), self.config.data.resize,
                        self.config.data.on_bad_image)

    def read_image(self, path: str | Path, view: str = "query") -> np.ndarray:
        """One image file as this run's model takes it: decoded as its training files were (image size, channels,
        `data.resize`) for a run on files; as the file holds it otherwise (`verify` then checks its shape)."""
        check_view(view)
        if "test_set" not in self.evaluation:
            from reprlearn.data.loaders import read_image_file

            return read_image_file(Path(path))
        from reprlearn.data.decode import decode_files

        return decode_files([str(path)], self.split("test").spec)[0]

    def split(self, name: str) -> ImageSet:
        """The run's `test` or `val` split as an ImageSet (streamed from its files for a file source)."""
        if f"{name}_set" in self.evaluation:
            return self.evaluation[f"{name}_set"]
        return ImageSet(self.evaluation[f"{name}_images"], self.evaluation[f"{name}_labels"], self.class_names)

    def embed(self, images, batch_size: int = 512, view: str = "query") -> np.ndarray:
        """`[N, d]` float32 embeddings of images (pixels 0-255) of the run's image shape; ValueError naming it.
        `view`: which tower embeds them (`"reference"`: what a gallery holds; one tower embeds both alike).
        A streamed file that does not decode gets a row of NaN (`embed_set` names them)."""
        if isinstance(images, ImageSet):  # a backbone's activations per batch are an evaluation's peak memory
            return self.embed_set(images, min(batch_size, SET_BATCH), view)[0]
        self._embeds()
        return embed(self.tower(view), self._checked(images, "images", view=view), batch_size)

    def embed_set(self, images: ImageSet, batch_size: int = SET_BATCH,
                  view: str = "query") -> tuple[np.ndarray, list[int]]:
        """`(embeddings [N, d], failed)`: an ImageSet embedded in order, `batch_size` images per model call;
        `failed` lists the items whose file did not decode (their rows are NaN)."""
        self._embeds()
        tower = self.tower(view)
        expected = tuple(int(s) for s in tower.inputs[0].shape[1:])
        if images.image_shape != expected:
            raise DataError(f"images must be {expected} for this run's {self._which(view)}. Received: an image "
                            f"set of {images.image_shape}")
        return embed_set(tower, images, batch_size)

    def _embeds(self) -> None:
        if self.kind == "verifier":
            raise RunFolderError(f"a verifier run scores pairs of images (run.verify, `reprlearn verify`) and has no "
                             f"embedding to embed, enrol or export. Received: run kind 'verifier' ({self.path})")

    def _which(self, view: str) -> str:
        return "model"

    def _checked(self, images, name: str, single: bool = False, view: str = "query") -> np.ndarray:
        """`images` (or one image) as the `view` tower's `[N, H, W, C]` input, or ValueError naming `name` and the
        shape."""
        given = np.asarray(images)
        batch = check_images(given[None] if single else given, name)
        expected = tuple(int(s) for s in self.tower(view).inputs[0].shape[1:])
        if batch.shape[1:] != expected:
            want = ", ".join(map(str, expected)) if single else "N, " + ", ".join(map(str, expected))
            raise DataError(f"{name} must be [{want}] for this run's {self._which(view)}. Received: "
                            f"{name}.shape={given.shape}")
        return batch

    def gallery(self, images, labels, ids=None, backend: str = "exact", class_names=None, **milvus) -> Gallery:
        """A gallery of these images, embedded by this run (a two-tower run's reference tower), ranked with its
        metric and marked with its fingerprint (`milvus`: `uri`, `collection`, `index`, as `Gallery` takes them)."""
        gallery = Gallery(self.metric, backend, self.model_fingerprint, class_names=class_names, **milvus)
        if len(gallery):
            raise GalleryError(f"{gallery.location} already holds {len(gallery)} items: add to it (`reprlearn index "
                               f"--add`), or choose another collection. Received: {milvus}")
        self.enrol(gallery, images, labels, ids)
        return gallery

    def embed_chunks(self, images, view: str = "query"):
        """Yields `(rows, embeddings [len(rows), d])` over images, `EMBED_CHUNK` at a time: for writers and
        galleries that should hold one chunk's embeddings, not the whole set's. A streamed file that does not
        decode is left out of `rows`."""
        for start in range(0, len(images), EMBED_CHUNK):
            rows = np.arange(start, min(start + EMBED_CHUNK, len(images)))
            if not isinstance(images, ImageSet):
                yield rows, self.embed(np.asarray(images)[rows], view=view)
                continue
            part, failed = self.embed_set(images.subset(rows), view=view)
            keep = np.setdiff1d(np.arange(len(rows)), failed)
            yield rows[keep], part[keep]

    def enrol(self, gallery: Gallery, images, labels, ids=None) -> list[str]:
        """Embeds images as references (a two-tower run's reference tower) and adds them to `gallery` chunk by
        chunk (`embed_chunks`). Ids default to running numbers from the gallery's size. Returns the ids of the
        items left out because their file did not decode."""
        labels = np.asarray(labels)
        if ids is None:
            ids = [str(i) for i in range(len(gallery), len(gallery) + len(images))]
        enrolled = []
        for rows, embeddings in self.embed_chunks(images, view="reference"):
            gallery.add(embeddings, labels[rows], [ids[i] for i in rows])
            enrolled.append(rows)
        left_out = np.setdiff1d(np.arange(len(images)), np.concatenate(enrolled) if enrolled else [])
        return [str(ids[i]) for i in left_out]

    def rejection_threshold(self, far: float = 1e-3) -> float:
        """The open-set rejection distance for a false-accept rate `far`, fit on the validation split only.

        Half of the validation classes (drawn with `data.seed`) are enrolled and the other half act as
        impostors: the threshold lets at most `far` of the impostors match an enrolled item.
        """
        val = self.split("val")
        labels = val.labels
        if len(np.unique(labels)) < 2:
            raise DataError(f"the validation split needs two classes to calibrate a rejection threshold. "
                             f"Received: {len(np.unique(labels))} class in {self.path}")
        return split_class_threshold(self.embed(val), labels, self.metric, far,
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
    """Reads a complete run folder's config, record and evaluation arrays.

    Raises:
        RunFolderError: the folder is not a run, or its run is not complete (failed, interrupted or still
            running); the message names the state and the command that finishes it.
    """
    path = Path(run_dir)
    record = read_json(path / RECORD_FILE)
    state, failure = run_state(path, record) if record else (None, None)
    if state not in (None, "complete"):  # a run, not finished: say why and what finishes it
        command = record.get("command")
        again = f"`{command}`" if command else "the same run_training call"
        why = (f"it failed: {failure}" if state == "failed"
               else "it is training or evaluating now, or was interrupted")
        raise RunFolderError(f"{path} is not a complete run ({why}). Running {again} again finishes it from its "
                             f"checkpoints. Received: run_dir={str(path)!r}")
    two_tower = record.get("kind") == "two_tower"
    models = (QUERY_FILE, REFERENCE_FILE) if two_tower else ("model.keras",)
    missing = [name for name in ("config.yaml", RECORD_FILE, EVALUATION_FILE, *models) if not (path / name).is_file()]
    if missing:
        raise RunFolderError(f"{path} is not a finished reprlearn run (missing {', '.join(missing)}). "
                             f"Received: run_dir={str(path)!r}")
    config = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    with np.load(path / EVALUATION_FILE) as arrays:
        evaluation = {name: arrays[name] for name in arrays.files}
    if two_tower:
        from reprlearn.runs.two_tower import TwoTowerRun, pair_sets

        return TwoTowerRun(path, config, record, {**evaluation, **pair_sets(config, record, evaluation, path)})
    if "test_keys" in evaluation:
        evaluation.update(_file_sets(config, record, evaluation, path))
    elif "test_images" not in evaluation:
        evaluation.update(_reload_evaluation(config, record, path))
    return Run(path, config, record, evaluation)


def unchanged_files(root: str, evaluation: dict, prefix: str, what: str, path: Path):
    """The `FileTable` evaluation.npz records under `prefix` (`_keys`, `_sizes`, `_mtimes`); RunFolderError naming
    the files changed, moved or gone since the run was trained."""
    from reprlearn.data.files import FileTable

    table = FileTable(root, evaluation[f"{prefix}_keys"].astype(object), evaluation[f"{prefix}_sizes"],
                      evaluation[f"{prefix}_mtimes"])
    changed = table.changed()
    if changed:
        raise RunFolderError(f"{len(changed)} {what} of {path} changed, moved or vanished since it was trained (size "
                             f"or modification time), e.g. {changed[:3]} under {root}; restore them or retrain")
    return table


def _file_sets(config: Config, record: dict, evaluation: dict, path: Path) -> dict:
    """The validation and test sets of a run trained on files, rebuilt from the paths it recorded; a file
    changed, moved or gone since is an error naming it."""
    from reprlearn.data.decode import DecodeSpec

    root = str(evaluation["files_root"])
    shape = record["data"]["image_shape"]
    spec = DecodeSpec(tuple(shape[:2]), int(shape[2]), config.data.resize)
    sets = {}
    for name in ("test", "val"):
        table = unchanged_files(root, evaluation, name, f"{name} files", path)
        sets[f"{name}_set"] = ImageSet(None, evaluation[f"{name}_labels"], list(record["data"]["class_names"]),
                                       list(table.relative), table, spec)
    return sets


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
