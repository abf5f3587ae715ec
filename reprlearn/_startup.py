"""Imports TensorFlow and Keras with TensorFlow's start-up notices silenced.

TensorFlow 2.21 writes four lines to stderr at import (oneDNN and CPU-feature notices, printed
before its logging is configured, whatever `TF_CPP_MIN_LOG_LEVEL` says), and on a machine without
an NVIDIA driver its CUDA-enabled wheel logs a failed `cuInit` the first time it looks for GPUs.
They drown the one-line errors of `reprlearn` commands and lengthen every log, so they are hidden
while TensorFlow loads and looks for GPUs once (which does not yet start its runtime, so a
multi-worker strategy can still be made). `TF_CPP_MIN_LOG_LEVEL=0` (set by you before the import)
keeps them.

TensorFlow's oneDNN kernels are switched on (`TF_ENABLE_ONEDNN_OPTS=1`) unless you set the variable
yourself: TensorFlow enables them by default only on CPUs with AVX-512 VNNI / AMX, and without them a
float32 matrix product on an AVX2 CPU runs at half the speed of OpenBLAS (benchmarks/search.py), which
is most of the time of every search and retrieval metric. Training is as fast or faster with them.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Imports tensorflow and keras with the C-level stderr sent to /dev/null for the duration."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")   # read once, when TensorFlow loads
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow

        tensorflow.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
