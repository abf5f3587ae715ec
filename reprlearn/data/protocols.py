"""Evaluation protocols: which classes and examples train, validate and test.

- `seen-classes`: the official train split (less a validation part) against the official
  test split, all classes in both.
- `unseen-classes`: train on one class set, test on the disjoint rest. Fashion-MNIST's
  default trains on classes 0-4 of the official train file and tests on classes 5-9 of
  the official test file.

The validation part always comes from the training side, stratified by class. A dataset
without an official test split (digits, image folders) is split 80/20 per class first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from reprlearn.data.imageset import ImageSet, is_unlabelled
from reprlearn.errors import DataError, ReprlearnWarning

PROTOCOLS = ("seen-classes", "unseen-classes")
# A class of a source without its own splits needs one image to train on and one to test on; one with fewer is
# left out of the run, named in a warning, run.json and the report (a gallery may still enrol it).
MIN_CLASS_IMAGES = 2


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    train_classes: list[int]
    test_classes: list[int]
    classes_left_out: list[str] = field(default_factory=list)   # names of classes too small to split


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (rest, part) with `fraction` of each class in `part`.

    A class keeps at least one example in `rest`; `part` takes round(fraction * n) of it.
    """
    rng = np.random.default_rng(seed)
    rest, part = [], []
    for c in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == c))
        n_part = min(int(round(fraction * len(index))), len(index) - 1)
        part.append(index[:n_part])
        rest.append(index[n_part:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(part))


def _cap(imageset: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """Keeps a class-stratified subset of at most `limit` examples (for quick runs)."""
    if limit is None or len(imageset) <= limit:
        return imageset
    _, keep = stratified_split(imageset.labels, limit / len(imageset), seed)
    return imageset.subset(keep)


def _without_small_classes(imageset: ImageSet) -> tuple[ImageSet, list[str]]:
    """`(the set without its classes of fewer than MIN_CLASS_IMAGES items, their names)`, warning when any."""
    classes, counts = np.unique(imageset.labels, return_counts=True)
    small = classes[counts < MIN_CLASS_IMAGES]
    if not len(small):
        return imageset, []
    names = [str(imageset.class_names[c]) for c in small]
    warnings.warn(f"classes with fewer than {MIN_CLASS_IMAGES} images were left out of the run (a class needs one "
                  f"image to train on and one to test on): {names[:10]}"
                  f"{f' and {len(names) - 10} more' if len(names) > 10 else ''}", ReprlearnWarning, stacklevel=4)
    return imageset.subset(~np.isin(imageset.labels, small)), names


def make_splits(sets: dict[str, ImageSet], protocol: str, train_classes: list[int] | None = None,
                validation_fraction: float = 0.1, seed: int = 0, max_train: int | None = None,
                max_test: int | None = None, validation_classes: int = 0) -> Splits:
    """Builds train/val/test sets for a protocol.

    Args:
        sets: loader output, `{"train", "test"}` (a file list may add `"validation"`: the val split) or `{"all"}`.
        protocol: `seen-classes` or `unseen-classes`.
        train_classes: unseen-classes only; default is the lower half of the class ids.
        validation_fraction: share of the training side held out for validation.
        seed: fixes every random choice.
        max_train, max_test: optional caps, stratified, for quick runs.
        validation_classes: if > 0, hold out this many whole training classes (chosen by `seed`) as the
            validation set instead of a stratified share, so validation measures retrieval of classes the
            model did not train on; `train_classes` of the result are then the classes left to train on.

    Raises:
        ValueError: unknown protocol, or train classes that leave no test class.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol; use one of {list(PROTOCOLS)}. Received: protocol={protocol!r}")
    given_val = sets.get("validation")  # a file list's own validation rows
    left_out = []
    if "all" in sets:
        whole, left_out = _without_small_classes(sets["all"])
        train_index, test_index = stratified_split(whole.labels, 0.2, seed)
        train_side, test_side = whole.subset(train_index), whole.subset(test_index)
    else:
        train_side, test_side = sets["train"], sets["test"]
    all_classes = sorted(set(train_side.classes) | set(test_side.classes))
    if is_unlabelled(train_side):
        # Images without labels: label-free training takes them (run_training refuses them to the other kinds); a
        # stratified share of the one class is validation (the collapse guard watches it), another the test split.
        if protocol != "seen-classes" or validation_classes:
            raise DataError("the dataset has no labels, so it has no classes to hold out: use data.protocol: "
                            f"seen-classes and data.validation_classes: 0. Received: data.protocol={protocol!r}, "
                            f"data.validation_classes={validation_classes}")
    elif len(all_classes) < 2:
        names = [str(train_side.class_names[c]) for c in all_classes]
        raise DataError(f"the dataset holds {len(all_classes)} usable class{'es' if len(all_classes) != 1 else ''} "
                        f"{names}{f' (left out, too few images: {left_out})' if left_out else ''}; retrieval needs "
                        "two classes at least (add a class folder, or images to the small ones). Received: "
                        f"{len(all_classes)} class{'es' if len(all_classes) != 1 else ''}")

    if protocol == "seen-classes":
        train_cls = test_cls = all_classes
    else:
        train_cls = sorted(train_classes) if train_classes is not None else all_classes[: len(all_classes) // 2]
        unknown = sorted(set(train_cls) - set(all_classes))
        if unknown:
            raise DataError(f"train_classes names classes the dataset lacks. Received: train_classes={train_classes}")
        test_cls = [c for c in all_classes if c not in train_cls]
        if not test_cls or not train_cls:
            raise DataError("unseen-classes needs at least one train and one test class. "
                             f"Received: train_classes={train_classes}")
        train_side = train_side.subset(np.isin(train_side.labels, train_cls))
        test_side = test_side.subset(np.isin(test_side.labels, test_cls))
        if given_val is not None:
            given_val = given_val.subset(np.isin(given_val.labels, train_cls))

    train_side = _cap(train_side, max_train, seed)
    test_side = _cap(test_side, max_test, seed)
    if validation_classes:
        if not 0 < validation_classes <= len(train_cls) - 2:
            raise DataError(f"validation_classes must leave at least 2 of the {len(train_cls)} training classes "
                             f"to train on. Received: validation_classes={validation_classes}")
        held_out = sorted(np.random.default_rng(seed + 1).choice(train_cls, validation_classes, replace=False))
        is_val = np.isin(train_side.labels, held_out)
        return Splits(train=train_side.subset(~is_val), val=train_side.subset(is_val), test=test_side,
                      train_classes=[c for c in train_cls if c not in held_out], test_classes=list(test_cls),
                      classes_left_out=left_out)
    if given_val is not None:
        return Splits(train=train_side, val=given_val, test=test_side, train_classes=list(train_cls),
                      test_classes=list(test_cls), classes_left_out=left_out)
    fit_index, val_index = stratified_split(train_side.labels, validation_fraction, seed + 1)
    return Splits(train=train_side.subset(fit_index), val=train_side.subset(val_index), test=test_side,
                  train_classes=list(train_cls), test_classes=list(test_cls), classes_left_out=left_out)


def splits_for(data_cfg, sets: dict[str, ImageSet] | None = None) -> Splits:
    """The splits a config's `data` section describes, loading the dataset unless `sets` is given."""
    from reprlearn.data.loaders import Decoding, load_dataset

    if sets is None:
        sets = load_dataset(data_cfg.name, data_cfg.data_dir, Decoding.of(data_cfg))
    return make_splits(sets, data_cfg.protocol, data_cfg.train_classes, data_cfg.validation_fraction,
                       data_cfg.seed, data_cfg.max_train, data_cfg.max_test, data_cfg.validation_classes)
