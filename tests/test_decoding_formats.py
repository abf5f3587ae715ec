"""Every image Pillow reads decodes as Pillow shows it: WebP, TIFF, 16-bit PNG, palette, CMYK, alpha, and JPEGs
turned by their EXIF orientation, each to the run's channels within ±1 of Pillow's own conversion; the same pixels
through a folder's streamed pipeline, and a SavedModel's encoded-bytes path that says what it does not apply."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from reprlearn.data.decode import DecodeSpec, decode_files
from reprlearn.data.loaders import Decoding, load_dataset, read_image_file
from reprlearn.data.pipelines import batches_in_order

RNG = np.random.default_rng(0)
# Smooth pictures (a gradient and a few blobs): lossy codecs then stay close to the pixels they were given.
Y, X = np.mgrid[0:40, 0:56]
PICTURE = np.stack([X * 4, Y * 6, (X + Y) * 2], -1).astype(np.uint8)


def _files(folder):
    """{name: path} of one picture in every mode and format the test covers."""
    rgb = Image.fromarray(PICTURE)
    alpha = Image.fromarray(np.dstack([PICTURE, (Y * 6).astype(np.uint8)]), "RGBA")
    gray16 = Image.fromarray(PICTURE[..., 0].astype(np.uint16) * 257)
    palette = rgb.quantize(32)
    palette.info["transparency"] = 0
    out = {}
    for name, image, fmt, options in [
        ("lossless.webp", rgb, "WEBP", {"lossless": True}),
        ("lossy.webp", rgb, "WEBP", {"quality": 95}),
        ("alpha.webp", alpha, "WEBP", {"lossless": True}),
        ("rgb.tiff", rgb, "TIFF", {}),
        ("gray16.tiff", gray16, "TIFF", {}),
        ("gray16.png", gray16, "PNG", {}),
        ("palette.png", palette, "PNG", {}),
        ("cmyk.jpg", rgb.convert("CMYK"), "JPEG", {"quality": 95}),
        ("rgba.png", alpha, "PNG", {}),
    ]:
        out[name] = folder / name
        image.save(out[name], fmt, **options)
    return out


def _pillow_view(path, channels):
    """What Pillow shows: EXIF-turned, alpha over black, then RGB or L (ITU-R 601 luma), as float."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode.startswith("I;16"):
            gray = (np.asarray(image, np.int64) >> 8).astype(np.float64)
            return gray[..., None]
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        rgba = np.asarray(image.convert("RGBA"), np.float64)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0) if has_alpha else rgba[..., :3]
    if channels == 3:
        return rgb
    return (rgb @ np.array([0.2989, 0.5870, 0.1140]))[..., None]


@pytest.mark.parametrize("channels", [3, 1])
def test_every_format_decodes_as_pillow_shows_it(tmp_path, channels):
    for name, path in _files(tmp_path).items():
        want = _pillow_view(path, channels)
        if want.shape[-1] == 1 and channels == 3:
            want = np.repeat(want, 3, -1)
        got = decode_files([str(path)], DecodeSpec(want.shape[:2], channels, "stretch"))[0]
        assert got.shape == want.shape, name
        assert np.max(np.abs(got - want)) <= 1.0 + 1e-4, (name, float(np.max(np.abs(got - want))))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_is_turned_by_its_exif_orientation_as_a_viewer_shows_it(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(PICTURE).save(path, "JPEG", quality=98, exif=exif.tobytes())
    want = _pillow_view(path, 3)
    assert want.shape[:2] == ((56, 40) if orientation >= 5 else (40, 56))
    got = decode_files([str(path)], DecodeSpec(want.shape[:2], 3, "stretch"))[0]
    # TensorFlow's accurate DCT decodes as Pillow does; a wrong turn or flip would move whole gradients.
    assert np.max(np.abs(got - want)) <= 1.0, orientation
    # The in-memory reader (run.read_image of a run on arrays, verify) turns it alike.
    np.testing.assert_allclose(read_image_file(path), want, atol=1.0)   # Pillow itself, rounded


def test_a_folder_of_mixed_formats_streams_every_file_as_decode_files_does(tmp_path):
    folder = tmp_path / "photos"
    (tmp_path / "src").mkdir()
    paths = _files(tmp_path / "src")
    for c in range(2):
        (folder / f"class_{c}").mkdir(parents=True)
        for name, path in paths.items():
            (folder / f"class_{c}" / name).write_bytes(path.read_bytes())
    imageset = load_dataset(f"folder:{folder}", decoding=Decoding((24, 32), channels=3, resize="stretch"))["all"]
    assert len(imageset) == 2 * len(paths) and imageset.source_record["skipped"] == []
    pixels = np.zeros((len(imageset), 24, 32, 3), np.float32)
    for images, items in batches_in_order(imageset, 5):
        pixels[items] = images
    want = decode_files(imageset.files.paths(), imageset.spec)
    np.testing.assert_allclose(pixels, want, atol=1e-4)


def test_the_saved_models_encoded_path_reads_tensorflows_formats_without_exif(tmp_path):
    """A SavedModel has no Python to call: `pillow=False` decodes JPEG/PNG/GIF/BMP/WebP with the same pixels as
    training, does not apply EXIF orientation, and refuses TIFF."""
    import tensorflow as tf

    from reprlearn.data.decode import decode_contents

    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(PICTURE).save(buffer, "JPEG", quality=98, exif=exif.tobytes())
    spec = DecodeSpec((40, 56), 3, "stretch")
    stored = decode_contents(tf.constant(buffer.getvalue()), spec, pillow=False).numpy()
    np.testing.assert_array_equal(stored, np.asarray(Image.open(buffer).convert("RGB")))   # as stored, not turned
    for fmt in ("WEBP", "TIFF"):
        encoded = io.BytesIO()
        Image.fromarray(PICTURE).save(encoded, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        if fmt == "WEBP":
            np.testing.assert_array_equal(decode_contents(tf.constant(encoded.getvalue()), spec, pillow=False),
                                          PICTURE)
        else:
            with pytest.raises(tf.errors.InvalidArgumentError):
                decode_contents(tf.constant(encoded.getvalue()), spec, pillow=False)
