"""How much memory a tower needs to train, estimated from its config before anything is built.

Building a tower to measure it would allocate the very weights that may not fit, so the MLP and
conv towers are counted from their definitions (`reprlearn.models.towers`) and the backbones from
figures measured once with `keras.applications` at 224 × 224 (parameters without the top, and the
sum of every layer's output size per image), scaled by the image area.

Example:
    parameters, activations = tower_size(cfg.model, (28, 28, 1))
    training_bytes(parameters, activations, batch=128)
"""

from __future__ import annotations

import math

# backbone: (parameters, activation floats per 224 × 224 image, pooled features), measured with
# keras.applications (Keras 3.13) without the top. A backbone not listed is not estimated (the check passes).
BACKBONE_SIZES = {"MobileNetV2": (2_257_984, 21_814_960, 1280), "ResNet50V2": (23_564_800, 31_380_204, 2048),
                  "EfficientNetB0": (4_049_571, 25_114_815, 1280), "MobileNetV3Small": (939_120, 5_355_584, 576),
                  "MobileNetV3Large": (2_996_352, 15_423_904, 960), "ResNet50": (23_587_712, 37_117_164, 2048),
                  "EfficientNetV2B0": (5_919_312, 16_164_752, 1280), "ConvNeXtTiny": (27_820_128, 28_788_480, 768)}
BYTES = 4  # float32 weights and activations


def _dense(inputs: int, units: int) -> int:
    return inputs * units + units


def tower_size(model_cfg, image_shape, streamed: bool = False) -> tuple[int, int] | None:
    """`(parameters, activation floats per example)` of the tower `model_cfg` builds for `image_shape` (None for
    a backbone without measured figures); `streamed`: a backbone takes the images at their own size."""
    height, width, channels = (int(v) for v in image_shape)
    pixels, embedding = height * width * channels, int(model_cfg.embedding_dim)
    if model_cfg.tower == "mlp":
        widths = [pixels, *map(int, model_cfg.hidden)]
        parameters = sum(_dense(a, b) for a, b in zip(widths, widths[1:])) + _dense(widths[-1], embedding)
        return parameters, 2 * pixels + 2 * sum(widths[1:]) + 2 * embedding  # input, rescale; dense, relu; head
    if model_cfg.tower == "conv":
        parameters, activations, depth = 0, 2 * pixels, channels
        for block, filters in enumerate(map(int, model_cfg.filters), start=1):
            area = (height // 2 ** (block - 1)) * (width // 2 ** (block - 1))
            parameters += 9 * depth * filters + filters
            activations += 2 * area * filters + (area // 4) * filters  # conv, relu, pool
            depth = filters
        features = (height // 2 ** len(model_cfg.filters)) * (width // 2 ** len(model_cfg.filters)) * depth
        dense = int(model_cfg.dense)
        parameters += (_dense(features, dense) + _dense(dense, embedding)) if dense else _dense(features, embedding)
        return parameters, activations + features + dense + 2 * embedding
    if model_cfg.backbone not in BACKBONE_SIZES:
        return None
    backbone_parameters, backbone_activations, features = BACKBONE_SIZES[model_cfg.backbone]
    area = height * width if streamed else int(model_cfg.backbone_image_size) ** 2
    return (backbone_parameters + _dense(features, embedding),
            math.ceil(backbone_activations * area / 224 ** 2) + pixels + 2 * embedding)


def training_bytes(parameters: int, activations: int, batch: int) -> int:
    """Bytes one training step holds: weights, their gradients and Adam's two moments (4 copies of the
    parameters), the activations kept for the backward pass and their gradients (2 per example), and the
    in-batch N × N distance, mask and mining matrices (about 8 of them)."""
    return BYTES * (4 * parameters + 2 * batch * activations + 8 * batch * batch)


def available_memory_bytes() -> int | None:
    """The memory the system can give a new allocation now (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
