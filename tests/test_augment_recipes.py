"""The two-view recipes' ops, one by one, against what each must compute; their determinism per (seed, step); the
recipe a data set gets; two-view batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from reprlearn.data.augment import augment_batch
from reprlearn.data.pipelines import two_view_batches
from reprlearn.data.recipes import (
    RECIPES,
    ViewRecipe,
    augment_view,
    gaussian_blur,
    random_resized_crop,
    recipe_views,
)
from reprlearn.errors import ConfigError, DataError

SEED = tf.constant([4, 9], tf.int64)
# Every op off: each test turns on the one it checks.
NOTHING = ViewRecipe(crop_scale=(1.0, 1.0), flip_probability=0.0, jitter_probability=0.0, grey_probability=0.0,
                     blur_probability=0.0, solarize_probability=0.0)
RNG = np.random.default_rng(0)
COLOUR = RNG.uniform(0, 255, (6, 40, 40, 3)).astype(np.float32)


def test_nothing_on_returns_the_images():
    np.testing.assert_allclose(augment_view(COLOUR, SEED, NOTHING, flips=True), COLOUR, atol=1e-3)


def test_random_resized_crop_reads_a_window_of_the_drawn_area_and_aspect():
    # A ramp along the width: a window of half the side (area 1/4, aspect 1) read over the whole output width
    # rises by half a pixel per output pixel, and one along the height by the same.
    ramp = np.tile(np.arange(40, dtype=np.float32)[None, None, :, None], (4, 40, 1, 1))
    out = random_resized_crop(tf.constant(ramp), SEED, (0.25, 0.25), (1.0, 1.0)).numpy()
    np.testing.assert_allclose(np.diff(out, axis=2), 0.5 * 39 / 39, atol=1e-4)
    assert np.ptp(out[:, :, 0, 0], axis=1).max() == 0  # each output column reads one input column
    # The windows differ between images (a place drawn per image).
    assert len({float(v) for v in out[:, 0, 0, 0]}) > 1
    # Aspect 4 at area 1/4: a window as wide as the image (its width clipped to 1) and a quarter as tall, so the
    # ramp along the width is read unchanged.
    wide = random_resized_crop(tf.constant(ramp), SEED, (0.25, 0.25), (4.0, 4.0)).numpy()
    np.testing.assert_allclose(wide, ramp, atol=1e-3)


def test_flip_only_where_the_data_allow_it():
    recipe = dataclasses.replace(NOTHING, flip_probability=1.0)
    np.testing.assert_allclose(augment_view(COLOUR, SEED, recipe, flips=True), COLOUR[:, :, ::-1], atol=1e-3)
    np.testing.assert_allclose(augment_view(COLOUR, SEED, recipe, flips=False), COLOUR, atol=1e-3)


def test_brightness_scales_each_image_by_one_factor_in_its_range():
    recipe = dataclasses.replace(NOTHING, jitter_probability=1.0, brightness=0.4, contrast=0.0, saturation=0.0,
                                 hue=0.0)
    dim = COLOUR * 0.5  # nothing clips
    out = augment_view(dim, SEED, recipe, flips=False).numpy()
    ratio = out / np.maximum(dim, 1e-3)
    for image, image_ratio in zip(dim, ratio):
        factor = np.median(image_ratio)
        assert 0.6 <= factor <= 1.4
        np.testing.assert_allclose(image_ratio[image > 1], factor, rtol=1e-3)


def test_saturation_keeps_luminance_and_hue_turns_the_chroma_plane():
    dim = COLOUR * 0.5 + 40
    saturation = dataclasses.replace(NOTHING, jitter_probability=1.0, brightness=0.0, contrast=0.0, saturation=0.4,
                                     hue=0.0)
    out = augment_view(dim, SEED, saturation, flips=False)
    np.testing.assert_allclose(tf.image.rgb_to_grayscale(out), tf.image.rgb_to_grayscale(dim), atol=0.05)
    # Hue turns the YIQ chroma plane: luminance (Y) and chroma magnitude kept, the angle turned by at most 0.1 turn.
    hue = dataclasses.replace(NOTHING, jitter_probability=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)
    soft = COLOUR * 0.3 + 90  # little chroma: a turn stays inside [0, 255], nothing clips
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    before = soft @ to_yiq.T
    after = augment_view(soft, SEED, hue, flips=False).numpy() @ to_yiq.T
    np.testing.assert_allclose(after[..., 0], before[..., 0], atol=1e-2)
    np.testing.assert_allclose(np.hypot(after[..., 1], after[..., 2]), np.hypot(before[..., 1], before[..., 2]),
                               atol=1e-2)
    turn = (np.angle(after[..., 1] + 1j * after[..., 2]) - np.angle(before[..., 1] + 1j * before[..., 2]))
    turn = np.abs((turn + np.pi) % (2 * np.pi) - np.pi) / (2 * np.pi)
    per_image = np.median(turn.reshape(len(soft), -1), axis=1)
    assert per_image.max() <= 0.1 + 1e-3 and per_image.max() > 1e-3


def test_contrast_blends_with_the_mean_luminance():
    recipe = dataclasses.replace(NOTHING, jitter_probability=1.0, brightness=0.0, contrast=0.4, saturation=0.0,
                                 hue=0.0)
    grey = np.full((3, 8, 8, 1), 100.0, np.float32)
    grey[:, :4] = 140.0  # mean 120
    out = augment_view(grey, SEED, recipe, flips=False).numpy()
    top, bottom = out[:, 0, 0, 0], out[:, -1, 0, 0]
    np.testing.assert_allclose((top + bottom) / 2, 120.0, atol=1e-3)
    factor = (top - bottom) / 40.0
    assert np.all((factor >= 0.6) & (factor <= 1.4))


def test_grey_solarize_and_the_jitter_probability():
    grey = augment_view(COLOUR, SEED, dataclasses.replace(NOTHING, grey_probability=1.0), flips=False).numpy()
    np.testing.assert_allclose(grey, np.repeat(tf.image.rgb_to_grayscale(COLOUR / 255.0).numpy() * 255, 3, axis=-1),
                               atol=1e-3)
    solar = augment_view(COLOUR, SEED, dataclasses.replace(NOTHING, solarize_probability=1.0), flips=False).numpy()
    np.testing.assert_allclose(solar, np.where(COLOUR >= 128, 255 - COLOUR, COLOUR), atol=1e-3)
    # Probability 0.5 over many images: about half jittered, the rest untouched.
    many = np.repeat(COLOUR[:1] * 0.5, 400, axis=0)
    half = dataclasses.replace(NOTHING, jitter_probability=0.5, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    changed = np.abs(augment_view(many, SEED, half, flips=False).numpy() - many).max(axis=(1, 2, 3)) > 1e-3
    assert 0.4 < changed.mean() < 0.6


def test_gaussian_blur_equals_a_numpy_separable_convolution():
    image = RNG.uniform(0, 1, (2, 20, 20, 1)).astype(np.float32)
    sigma = np.array([0.7, 1.9], np.float32)
    out = gaussian_blur(tf.constant(image), tf.constant(sigma)).numpy()
    radius = 1  # 20 // 20
    for b in range(2):
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma[b]) ** 2)
        taps /= taps.sum()
        padded = np.pad(image[b, :, :, 0], radius, mode="reflect")
        expected = np.zeros((20, 20))
        for i in range(20):
            for j in range(20):
                expected[i, j] = sum(taps[u] * taps[v] * padded[i + u, j + v] for u in range(3) for v in range(3))
        np.testing.assert_allclose(out[b, :, :, 0], expected, atol=1e-5)
    constant = np.full((1, 40, 40, 3), 0.3, np.float32)
    np.testing.assert_allclose(gaussian_blur(tf.constant(constant), tf.constant([2.0])), constant, atol=1e-6)


def test_draws_are_keyed_by_the_seed_and_stay_in_range():
    recipe = recipe_views("byol", COLOUR.shape)[1]
    first = augment_view(COLOUR, SEED, recipe, flips=True).numpy()
    np.testing.assert_array_equal(first, augment_view(COLOUR, SEED, recipe, flips=True).numpy())
    assert not np.allclose(first, augment_view(COLOUR, tf.constant([4, 10], tf.int64), recipe, flips=True).numpy())
    assert first.min() >= 0 and first.max() <= 255 and first.shape == COLOUR.shape
    # A P×K batch takes the recipe's first view.
    np.testing.assert_array_equal(augment_batch(tf.constant(COLOUR), SEED, "simclr", True),
                                  augment_view(COLOUR, SEED, recipe_views("simclr", COLOUR.shape)[0], True))


def test_the_recipe_a_data_set_gets_and_options_set_one_by_one():
    simclr, _ = recipe_views("simclr", (96, 96, 3))
    assert (simclr.crop_scale, simclr.blur_probability, simclr.hue) == ((0.08, 1.0), 0.5, 0.1)
    byol_1, byol_2 = recipe_views("byol", (96, 96, 3))
    assert (byol_1.blur_probability, byol_2.blur_probability) == (1.0, 0.1)
    assert (byol_1.solarize_probability, byol_2.solarize_probability) == (0.0, 0.2)
    grey, _ = recipe_views("simclr", (28, 28, 1))  # small grey images: no colour ops, crops of >= 20 %, no blur
    assert (grey.saturation, grey.hue, grey.grey_probability, grey.blur_probability) == (0, 0, 0, 0)
    assert grey.crop_scale == (0.2, 1.0)
    chosen_1, chosen_2 = recipe_views("byol", (96, 96, 3), {"hue": 0.0, "blur_probability": [0.3, 0.0],
                                                            "crop_scale": [0.5, 1.0]})
    assert (chosen_1.hue, chosen_1.blur_probability, chosen_2.blur_probability) == (0.0, 0.3, 0.0)
    assert chosen_1.crop_scale == chosen_2.crop_scale == (0.5, 1.0)
    with pytest.raises(ConfigError, match=r"Received: \['hues'\]"):
        recipe_views("simclr", (96, 96, 3), {"hues": 0.1})
    with pytest.raises(ConfigError, match=r"crop_scale=\[0.9, 0.1\]"):
        recipe_views("simclr", (96, 96, 3), {"crop_scale": [0.9, 0.1]})
    with pytest.raises(ConfigError, match="data.augment='autumn'"):
        recipe_views("autumn", (96, 96, 3))
    assert set(RECIPES) == {"simclr", "byol"}


def test_two_view_batches_draw_distinct_images_and_resume_exactly():
    images = RNG.integers(0, 255, (50, 16, 16, 3)).astype(np.uint8)
    stream = iter(two_view_batches(images, 20, seed=3, recipe="simclr", flips=True))
    batches = [next(stream) for _ in range(3)]
    resumed = next(iter(two_view_batches(images, 20, seed=3, start_step=2, recipe="simclr", flips=True)))
    for got, expected in zip(resumed, batches[2]):
        np.testing.assert_array_equal(got, expected)
    first, second = batches[0]
    assert first.shape == second.shape == (20, 16, 16, 3)
    assert not np.allclose(first, second)
    # Without any op on, the two views are the drawn images themselves: 20 distinct rows of `images`.
    plain = next(iter(two_view_batches(images, 20, seed=3, recipe="simclr", options={
        "crop_scale": [1.0, 1.0], "flip_probability": 0.0, "jitter_probability": 0.0, "grey_probability": 0.0})))
    rows = [int(np.flatnonzero((images.reshape(50, -1) == v.reshape(1, -1)).all(axis=1))[0])
            for v in plain[0].numpy().astype(np.uint8)]
    assert len(set(rows)) == 20
    with pytest.raises(DataError, match="batch_size=51"):
        two_view_batches(images, 51)


def test_a_streamed_file_gets_the_recipe_as_it_is_decoded():
    """P×K batches from files augment each file as it is decoded (`augment_image`): the recipe's first view of
    that one image, inside a traced function."""
    from reprlearn.data.augment import augment_image

    image = tf.constant(COLOUR[0])
    traced = tf.function(lambda x: augment_image(x, SEED, "simclr", True))
    np.testing.assert_allclose(traced(image), augment_batch(image[None], SEED, "simclr", True)[0], atol=1e-4)
