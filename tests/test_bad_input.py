"""Bad input ends in one line that names the file, key or value (exit 2), and leaves no half-made run folder."""

import gzip

import numpy as np
import pytest
from PIL import Image

from reprlearn.cli import main
from reprlearn.data.loaders import Decoding, load_folder


def _train(tmp_path, capsys, config_text: str, *extra: str) -> str:
    config = tmp_path / "c.yaml"
    config.write_text(config_text)
    code = main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    return err


@pytest.mark.parametrize("text, expected", [
    ("data: [x\n", "is not valid YAML at line"),
    ("- data\n- model\n", "must be a mapping of sections"),
    ("data: digits\n", "section 'data'"),
])
def test_malformed_configs(tmp_path, capsys, text, expected):
    assert expected in _train(tmp_path, capsys, text)


def test_a_data_dir_without_the_dataset_is_an_error_never_a_fallback(tmp_path, capsys):
    err = _train(tmp_path, capsys, "data: {name: fashion_mnist}\n", "--set", f"data.data_dir={tmp_path / 'nope'}")
    assert "does not exist" in err and "nope" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (partial / name).write_bytes(b"")
    err = _train(tmp_path, capsys, "data: {name: fashion_mnist}\n", "--set", f"data.data_dir={partial}")
    assert "t10k-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err


def test_a_truncated_idx_file_is_named(tmp_path, capsys):
    folder = tmp_path / "fm"
    folder.mkdir()
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05"))
    whole = gzip.compress(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(8))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(whole[: len(whole) // 2])
    err = _train(tmp_path, capsys, "data: {name: fashion_mnist}\n", "--set", f"data.data_dir={folder}")
    assert "train-images-idx3-ubyte.gz" in err and "truncated or corrupt" in err


def _folder(tmp_path, size=(6, 6), mode="L", n=3):
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full(size, 40 * i + (c == "b") * 100, np.uint8)).convert(mode).save(root / c / f"{i}.png")
    return root


def test_corrupt_and_truncated_images_are_named(tmp_path, capsys):
    root = _folder(tmp_path)
    (root / "a" / "bad.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="1 unusable image files were skipped: a/bad.png: not an image"):
        assert len(load_folder(root)["all"]) == 6
    (root / "a" / "bad.png").unlink()
    whole = (root / "b" / "0.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="b/cut.png: truncated"):
        load_folder(root, Decoding(on_bad_image="error"))
    err = _train(tmp_path, capsys, f"data: {{name: 'folder:{root}', on_bad_image: error}}\n")
    assert "cut.png" in err


def test_sixteen_bit_grayscale_keeps_one_channel_and_its_brightness(tmp_path):
    root = _folder(tmp_path)
    wide = np.full((6, 6), 32768, np.uint16)  # half scale in 16 bits
    Image.fromarray(wide).save(root / "a" / "deep.png")
    images = load_folder(root)["all"].pixels(np.arange(4))
    assert images.shape[1:] == (6, 6, 1)
    deep = images[3]  # a/0, a/1, a/2, a/deep: sorted by name
    assert int(deep.max()) == int(deep.min()) == 128


def test_palette_and_rgba_become_rgb_for_the_whole_tree(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.full((6, 6, 4), 200, np.uint8), "RGBA").save(root / "b" / "alpha.png")
    Image.fromarray(np.full((6, 6), 90, np.uint8)).convert("P").save(root / "b" / "palette.png")
    imageset = load_folder(root)["all"]
    images = imageset.pixels(np.arange(len(imageset)))
    assert images.shape[1:] == (6, 6, 3)
    alpha = imageset.names.index("b/alpha.png")
    assert np.allclose(images[alpha], 200 * 200 / 255, atol=1e-3)   # composited on black
    assert np.allclose(images[imageset.names.index("b/palette.png")], 90)


def test_the_odd_sized_image_is_the_one_named(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.zeros((9, 7), np.uint8)).save(root / "b" / "odd.png")
    with pytest.raises(ValueError, match=r"'a/0.png' is 6x6, 'b/odd.png' is 9x7\): set data.image_size"):
        load_folder(root)


def test_export_out_pointing_at_a_file(tmp_path, capsys, digits_config):
    assert main(["train", str(digits_config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "out must be a folder" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "serving")]) == 2
    assert "not a finished reprlearn run" in capsys.readouterr().err
