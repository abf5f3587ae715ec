"""Training progress output: Keras progress bars on a terminal, one line per epoch in a log file.

Example:
    verbose, callbacks = progress(verbose=1, epochs=5)
    model.fit(batches, epochs=5, verbose=verbose, callbacks=callbacks)
"""

from __future__ import annotations

import sys
import time

import keras


class EpochLog(keras.callbacks.Callback):
    """One line per epoch (epoch, seconds, every logged value): the progress output when stdout is not a terminal."""

    def __init__(self, epochs: int, stream=None):
        super().__init__()
        self.epochs, self.stream, self.started = epochs, stream, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        values = " ".join(f"{name} {float(value):.4f}" for name, value in (logs or {}).items())
        print(f"epoch {epoch + 1}/{self.epochs} {time.perf_counter() - self.started:.1f}s {values}",
              file=self.stream or sys.stdout, flush=True)


def progress(verbose: int, epochs: int) -> tuple[int, list[keras.callbacks.Callback]]:
    """Keras' `verbose` and extra callbacks: progress bars on a terminal, one line per epoch otherwise."""
    if not verbose:
        return 0, []
    if sys.stdout.isatty():
        return 1, []
    return 0, [EpochLog(epochs)]
