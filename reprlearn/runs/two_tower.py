"""A finished two-tower run read back as a `TwoTowerRun`: the `Run` interface with a query tower for what is asked
and a reference tower for what a gallery holds.

Example:
    ```python
    run = load_run("runs/crossview")                      # a TwoTowerRun
    gallery = run.gallery(overhead_images, place_ids)     # enrolled with the reference tower
    found = gallery.identify(run.embed(street_photos))    # asked with the query tower
    ```
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from reprlearn.config import Config
from reprlearn.data import ImageSet
from reprlearn.data.pairs import PairSet
from reprlearn.errors import RunFolderError
from reprlearn.index import split_class_threshold
from reprlearn.ops.distances import paired_distance
from reprlearn.runs.api import Run, check_view, unchanged_files
from reprlearn.runs.record import QUERY_FILE, REFERENCE_FILE


@dataclass
class TwoTowerRun(Run):
    """A complete two-tower run: `model` is its query tower (`query.keras`), `reference_model` its reference tower
    (`reference.keras`); `embed(images, view=...)` picks the tower, galleries enrol references, `split(name)` is a
    `PairSet`.

    Example:
        run.embed(queries)                         # the query tower
        run.embed(references, view="reference")   # the reference tower
        run.verify(query_image, reference_image)   # {"distance", "threshold", "match"}
    """
    _reference: keras.Model | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> keras.Model:
        """`query.keras`, the query tower, loaded once."""
        if self._model is None:
            self._model = keras.saving.load_model(self.path / QUERY_FILE, compile=False)
        return self._model

    @property
    def reference_model(self) -> keras.Model:
        """`reference.keras`, the reference tower, loaded once."""
        if self._reference is None:
            self._reference = keras.saving.load_model(self.path / REFERENCE_FILE, compile=False)
        return self._reference

    def tower(self, view: str = "query") -> keras.Model:
        return self.model if check_view(view) == "query" else self.reference_model

    def _which(self, view: str) -> str:
        return f"{view} tower"

    @property
    def model_fingerprint(self) -> str:
        """A SHA-256 prefix of both towers' files: a gallery enrolled by other towers is refused."""
        digest = hashlib.sha256()
        for name in (QUERY_FILE, REFERENCE_FILE):
            digest.update((self.path / name).read_bytes())
        return digest.hexdigest()[:16]

    def read_image(self, path: str | Path, view: str = "query") -> np.ndarray:
        """One image file decoded as `view`'s tower takes it (its size and channels, `data.resize`)."""
        from reprlearn.data.decode import DecodeSpec, decode_files

        decoding = self.decoding_for(view)
        return decode_files([str(path)], DecodeSpec(decoding.image_size, decoding.channels, decoding.resize))[0]

    def split(self, name: str) -> PairSet:
        """The run's `test` or `val` matched pairs (streamed from their files for a file source)."""
        return self.evaluation[f"{name}_pairs"]

    def rejection_threshold(self, far: float = 1e-3) -> float:
        """The open-set rejection distance for a false-accept rate `far`, fit on the validation pairs only: the
        references of half of the places (drawn with `data.seed`) enrolled, the queries of the others impostors."""
        val = self.split("val")
        references = val.references()
        return split_class_threshold(self.embed(val.query), val.labels, self.metric, far, self.config.data.seed,
                                     self.embed(references, view="reference"), references.labels)

    def verify(self, image_a, image_b) -> dict:
        """Does a query image (`image_a`) show the place of a reference image (`image_b`)? Their distance, the
        threshold fit on validation pairs (report.json) and the decision."""
        query = self.embed(self._checked(image_a, "image_a", single=True))
        reference = self.embed(self._checked(image_b, "image_b", single=True, view="reference"), view="reference")
        distance = float(paired_distance(query, reference, self.metric).numpy()[0])
        threshold = self.verification_threshold
        return {"distance": distance, "threshold": threshold,
                "match": None if threshold is None else bool(distance <= threshold)}


def pair_sets(config: Config, record: dict, evaluation: dict, path: Path) -> dict:
    """`{"val_pairs", "test_pairs"}`: a two-tower run's validation and test pairs from evaluation.npz (pixels, or
    files checked against their recorded size and modification time)."""
    from reprlearn.data.decode import DecodeSpec

    if "test_labels" not in evaluation:  # a run from before evaluation.npz kept its pairs
        return _reloaded_pair_sets(config, record, path)
    shapes = {"query": record["data"]["image_shape"], "reference": record["data"]["reference_shape"]}
    sets = {}
    for name in ("val", "test"):
        labels, names = evaluation[f"{name}_labels"], [str(n) for n in evaluation[f"{name}_class_names"]]
        views = {}
        for view, shape in shapes.items():
            if f"{name}_{view}_images" in evaluation:
                views[view] = ImageSet(evaluation[f"{name}_{view}_images"], labels, names)
                continue
            table = unchanged_files(str(evaluation[f"{name}_{view}_root"]), evaluation, f"{name}_{view}",
                                    f"{name} {view} files", path)
            spec = DecodeSpec(tuple(shape[:2]), int(shape[2]), config.data.resize)
            views[view] = ImageSet(None, labels, names, list(table.relative), table, spec)
        sets[f"{name}_pairs"] = PairSet(views["query"], views["reference"], evaluation[f"{name}_reference_keys"],
                                        bool(record["data"].get("labelled")))
    return sets


def _reloaded_pair_sets(config: Config, record: dict, path: Path) -> dict:
    """The validation and test pairs of a run whose evaluation.npz does not hold them, from its recorded source,
    each split checked against its recorded fingerprint."""
    from reprlearn.data.pairs import pair_splits_for
    from reprlearn.runs.record import pair_fingerprint

    if record["data"]["name"] == "arrays":
        raise RunFolderError(f"{path} was trained on arrays by an earlier reprlearn that did not keep its test pairs; "
                             f"train it again to use it. Received: run_dir={str(path)!r}")
    # Read from the files as they are (no data.cache): only the splits' fingerprints are needed.
    splits = pair_splits_for(dataclasses.replace(config.data, cache=None))
    for name, part in (("val", splits.val), ("test", splits.test)):
        recorded = record["data"]["splits"][name]["fingerprint"]
        if pair_fingerprint(part) != recorded:
            raise RunFolderError(f"the {name} pairs of {record['data']['source']} have changed since {path} was "
                                 f"trained (fingerprint {pair_fingerprint(part)}, recorded {recorded}); restore the "
                                 "data or retrain")
    return {"val_pairs": splits.val, "test_pairs": splits.test}
