"""The self-supervised methods' names and defaults: what config validation and the model builder both read.

Example:
    METHOD_DEFAULTS["byol"].predictor   # (4096, 256)
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from reprlearn.errors import ConfigError


class MethodDefaults(NamedTuple):
    projector: tuple[int, ...]          # hidden widths, then the output width
    predictor: tuple[int, ...]          # () for none; else hidden widths, then the output (= projector's output)
    temperature: float | None           # NT-Xent / InfoNCE τ
    momentum: float | None              # the EMA's m (BYOL: its base, raised to 1 by a cosine over the run)
    memory_size: int                    # queued negatives (MoCo's queue)
    projector_output_norm: bool         # a BatchNorm on the projector's output (SimSiam's)


# Sources: SimCLR (Chen et al. 2020: 2-layer head, 128 out; τ 0.1 for small batches, as keras.io's example);
# MoCo v2 (Chen et al. 2020: 2-layer head, 128 out, τ 0.2, m 0.99 for small data sets as lightly's CIFAR recipe,
# the paper's 0.999 for ImageNet; a 4,096 queue, cut to a quarter of the training images); MoCo v3 (Chen, Xie
# & He 2021: 4096 → 256 heads, a predictor on the query side, no queue, τ 0.2, m 0.99 → 1); BYOL (Grill et al.
# 2020: 4096 → 256 heads, τ_base 0.996);
# SimSiam (Chen & He 2021: a 3-layer 2048 projector with BN on its output, a 512-wide predictor, as TF
# Similarity's); Barlow Twins (Zbontar et al. 2021) and VICReg (Bardes et al. 2022): 3-layer expanders, here
# 2,048 wide rather than the papers' 8,192 (a 134 M-parameter head is beyond a CPU run; set model.projector).
METHOD_DEFAULTS = {
    "simclr": MethodDefaults((2048, 128), (), 0.1, None, 0, False),
    "moco": MethodDefaults((2048, 128), (), 0.2, 0.99, 4096, False),
    "moco_v3": MethodDefaults((4096, 256), (4096, 256), 0.2, 0.99, 0, False),
    "byol": MethodDefaults((4096, 256), (4096, 256), None, 0.996, 0, False),
    "simsiam": MethodDefaults((2048, 2048, 2048), (512, 2048), None, None, 0, True),
    "barlow_twins": MethodDefaults((2048, 2048, 2048), (), None, None, 0, False),
    "vicreg": MethodDefaults((2048, 2048, 2048), (), None, None, 0, False),
}
METHODS = tuple(METHOD_DEFAULTS)
MOMENTUM_METHODS = ("moco", "moco_v3", "byol")
PREDICTOR_METHODS = ("moco_v3", "byol", "simsiam")
# The methods whose momentum rises to 1 by a cosine over the run (MoCo v2 keeps its m).
COSINE_MOMENTUM_METHODS = ("moco_v3", "byol")
MEMORY_METHODS = ("simclr", "moco")


def method_settings(method: str, projector: Sequence[int] | None = None, predictor: Sequence[int] | None = None,
                    memory_size: int | None = None, momentum: float | None = None):
    """`(projector, predictor, memory_size)` of `method` with the given values over its defaults, checked: what the
    config rules and the model builder both refuse.

    Raises:
        ConfigError: an unknown method, a projector without widths, a method that needs a predictor without one, a
            predictor whose output is not the projector's width, a memory for a method without negatives, or a
            momentum outside [0, 1).
    """
    if method not in METHOD_DEFAULTS:
        raise ConfigError(f"model.method must be one of {list(METHODS)}. Received: model.method={method!r}")
    defaults = METHOD_DEFAULTS[method]
    projector = tuple(int(v) for v in (defaults.projector if projector is None else projector))
    predictor = tuple(int(v) for v in (defaults.predictor if predictor is None else predictor))
    memory_size = int(defaults.memory_size if memory_size is None else memory_size)
    if not projector:
        raise ConfigError("model.projector needs at least its output width. Received: model.projector=[]")
    if method in PREDICTOR_METHODS and not predictor:
        raise ConfigError(f"{method} needs a predictor. Received: model.predictor=[]")
    if predictor and predictor[-1] != projector[-1]:
        raise ConfigError(f"the predictor's output width must equal the projector's ({projector[-1]}). "
                          f"Received: model.predictor={list(predictor)}, model.projector={list(projector)}")
    if memory_size and method not in MEMORY_METHODS:
        raise ConfigError(f"train.memory_size queues negatives for {list(MEMORY_METHODS)}; {method} compares no "
                          f"negatives. Received: train.memory_size={memory_size}, model.method={method!r}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ConfigError(f"model.momentum must be in [0, 1). Received: model.momentum={momentum!r}")
    return projector, predictor, memory_size
