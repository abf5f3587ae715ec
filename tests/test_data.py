import gzip

import numpy as np
import pytest
from PIL import Image

from reprlearn.data import DatasetNotFoundError, load_dataset, make_imageset, make_splits, read_idx
from reprlearn.data.loaders import load_fashion_mnist
from reprlearn.data.pipelines import pair_batches, pair_indices, pk_batches, pk_indices


def _write_idx(path, array):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def _fake_fashion_mnist(folder, n_train=30, n_test=20):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.idx", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_a_data_dir(tmp_path):
    _fake_fashion_mnist(tmp_path)
    sets = load_fashion_mnist(str(tmp_path))
    assert sets["train"].images.shape == (30, 28, 28, 1) and sets["test"].images.shape == (20, 28, 28, 1)
    assert sets["train"].class_names[9] == "Ankle boot"
    assert sets["test"].labels.tolist() == [i % 10 for i in range(20)]


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("reprlearn.data.loaders.FASHION_MNIST_DIRS", (str(tmp_path / "none"),))
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(None)


def test_unknown_dataset_names_the_value():
    with pytest.raises(ValueError, match="name='mnist_typo'"):
        load_dataset("mnist_typo")


def test_tfds_without_prepared_data_fails_fast(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not prepared"):
        load_dataset("tfds:mnist", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset("tfds:mnist", None)


def test_digits():
    sets = load_dataset("digits")
    assert sets["all"].images.shape == (1797, 8, 8, 1) and sets["all"].images.dtype == np.uint8
    assert sets["all"].images.max() == 255 and sorted(np.unique(sets["all"].labels)) == list(range(10))


def test_folder_tree(tmp_path):
    for name, value in (("cat", 10), ("dog", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((5, 6), value + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    sets = load_dataset(f"folder:{tmp_path}")
    assert sets["all"].class_names == ["cat", "dog"] and sets["all"].streamed
    pixels = sets["all"].pixels(np.arange(6))
    assert pixels.shape == (6, 5, 6, 1)
    assert sets["all"].labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert pixels[4, 0, 0, 0] == 201
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match=r"classes with no readable image were dropped: \['empty'\]"):
        assert load_dataset(str(tmp_path))["all"].class_names == ["cat", "dog"]


def test_bad_arrays_are_named():
    good = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match=r"images.shape=\(4, 8\)"):
        make_imageset(np.zeros((4, 8)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"labels.shape=\(4, 2\)"):
        make_imageset(good, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="labels.dtype"):
        make_imageset(good, np.array([0.5, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels.dtype=<U1"):
        make_imageset(good, np.array(["a", "b", "a", "b"]))
    nan = good.astype(np.float32)
    nan[2, 3, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*example 2"):
        make_imageset(nan, [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"empty class.*\['b'\]"):
        make_imageset(good, [0, 0, 2, 2], ["a", "b", "c"])
    assert make_imageset(good, np.array([[0], [1], [0], [1]])).labels.tolist() == [0, 1, 0, 1]


def test_protocols(tmp_path):
    _fake_fashion_mnist(tmp_path, n_train=200, n_test=100)
    sets = load_fashion_mnist(str(tmp_path))
    seen = make_splits(sets, "seen-classes", validation_fraction=0.1)
    assert len(seen.test) == 100 and len(seen.train) + len(seen.val) == 200 and len(seen.val) == 20
    assert seen.train_classes == seen.test_classes == list(range(10))
    unseen = make_splits(sets, "unseen-classes")
    assert unseen.train_classes == [0, 1, 2, 3, 4] and unseen.test_classes == [5, 6, 7, 8, 9]
    assert set(unseen.train.labels) | set(unseen.val.labels) <= {0, 1, 2, 3, 4}
    assert set(unseen.test.labels) == {5, 6, 7, 8, 9} and len(unseen.test) == 50
    custom = make_splits(sets, "unseen-classes", train_classes=[1, 3])
    assert custom.test_classes == [0, 2, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="protocol='leave-one-out'"):
        make_splits(sets, "leave-one-out")


def test_single_split_sets_are_split_per_class():
    sets = load_dataset("digits")
    splits = make_splits(sets, "unseen-classes", seed=3)
    assert splits.test_classes == [5, 6, 7, 8, 9]
    assert not set(splits.train.labels) & set(splits.test.labels)
    assert 0.15 < len(splits.test) / 900 < 0.25  # 20% of the test classes' items


def test_pk_batches_have_p_classes_of_k_and_are_deterministic():
    labels = np.repeat(np.arange(6), 20)
    index = list(pk_indices(labels, 3, 4, seed=7).take(5).as_numpy_iterator())
    for batch in index:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 3 and counts.tolist() == [4, 4, 4]
        assert len(set(batch.tolist())) == 12  # large classes: no repeats
    again = list(pk_indices(labels, 3, 4, seed=7).take(5).as_numpy_iterator())
    assert all(np.array_equal(a, b) for a, b in zip(index, again))
    resumed = list(pk_indices(labels, 3, 4, seed=7, start_step=3).take(2).as_numpy_iterator())
    assert np.array_equal(resumed[0], index[3]) and np.array_equal(resumed[1], index[4])


def test_pk_small_class_is_sampled_with_replacement():
    labels = np.array([0] * 10 + [1] * 2)
    for batch in pk_indices(labels, 2, 5, seed=0).take(5).as_numpy_iterator():
        small = batch[labels[batch] == 1]
        assert len(small) == 5 and set(small.tolist()) <= {10, 11}
        assert len(set(batch[labels[batch] == 0].tolist())) == 5


def test_pk_rejects_more_classes_than_exist():
    with pytest.raises(ValueError, match="classes_per_batch=5"):
        pk_indices(np.repeat(np.arange(3), 4), 5, 2, seed=0)


def test_pk_batches_gather_images_and_labels():
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    labels = np.repeat(np.arange(3), 4)
    x, y = next(iter(pk_batches(images, labels, 2, 2, seed=1)))
    assert x.dtype.name == "float32" and x.shape == (4, 1, 1, 1)
    np.testing.assert_array_equal(labels[x.numpy().astype(int).ravel()], y.numpy())


def test_pairs_are_balanced_and_labelled_right():
    labels = np.array([0, 0, 0, 1, 1, 2, 3])  # class 2 and 3 have one item each
    for first, second, match in pair_indices(labels, 32, seed=2).take(4).as_numpy_iterator():
        assert match.sum() == 16
        same = labels[first] == labels[second]
        np.testing.assert_array_equal(same, match == 1)
        singleton = np.isin(labels[first], [2, 3])
        distinct = first != second
        assert np.all(distinct[(match == 1) & ~singleton])
    (a, b), m = next(iter(pair_batches(np.zeros((7, 2, 2, 1), np.uint8), labels, 8)))
    assert a.shape == (8, 2, 2, 1) and m.shape == (8,)


def test_validation_classes_hold_out_whole_training_classes():
    from reprlearn.data import load_dataset, make_splits

    sets = load_dataset("digits")
    splits = make_splits(sets, "unseen-classes", validation_classes=2, seed=3)
    val_classes = sorted(set(splits.val.labels.tolist()))
    assert len(val_classes) == 2 and not set(val_classes) & set(splits.train.labels.tolist())
    assert sorted(splits.train_classes + val_classes) == [0, 1, 2, 3, 4]
    assert not set(val_classes) & set(splits.test_classes)
    with pytest.raises(ValueError, match="validation_classes=4"):
        make_splits(sets, "unseen-classes", validation_classes=4)
