"""The problems a user can fix, one class per kind; anything else raised inside reprlearn is a bug.

The command line prints a `ReprlearnError` as one line and exits 2; any other exception is an
internal error, shown with its traceback. Every class also derives from the built-in exception
that the same check raised before the hierarchy existed (`ValueError`, `FileNotFoundError`,
`RuntimeError`), so `except ValueError` in user code keeps working.

Example:
    try:
        cfg = load_config("configs/demo.yaml", overrides=["train.epochs=0"])
    except ReprlearnError as error:
        print(error)  # config: train.epochs must be > 0. Received: train.epochs=0
"""


class ReprlearnError(Exception):
    """A problem in what the user gave reprlearn (config, data, folder, arguments) that the user can fix."""


class ConfigError(ReprlearnError, ValueError):
    """A config key is unknown, mistyped, out of range, or does not fit the other keys or the data."""


class DataError(ReprlearnError, ValueError):
    """Images, labels or a dataset cannot be used as given (wrong shape, too few classes, unreadable files)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset is not on this machine; the message says how to get it."""


class RunFolderError(ReprlearnError, ValueError):
    """A run folder cannot be used as asked: made by another config or other data, missing, or not a run."""


class ExportError(ReprlearnError, RuntimeError, ValueError):
    """An export failed a parity gate or cannot start (a bad format, an existing version, a run that has no embedding);
    nothing was written to the output folder."""


class GalleryError(ReprlearnError, ValueError):
    """A gallery cannot be used as asked: bad input, an empty gallery, or a folder that holds no valid gallery."""


class ClusterError(ReprlearnError, RuntimeError):
    """A cluster engine cannot be used as asked: not installed, an address that does not answer, nodes that cannot
    read the data or write the output."""


class ReprlearnWarning(UserWarning):
    """Something reprlearn did for the user that they should know of (files skipped, classes left out, images
    upscaled); shown as one line, `reprlearn: warning: ...`, without Python's file:line prefix and source line."""


def _one_line(message, category, filename, lineno, line=None, _python=None):
    if isinstance(category, type) and issubclass(category, ReprlearnWarning):
        return f"reprlearn: warning: {message}\n"
    return _python(message, category, filename, lineno, line)


def install_warning_format() -> None:
    """Formats `ReprlearnWarning`s as one line (every other warning as Python does); done once at import."""
    import functools
    import warnings

    if getattr(warnings.formatwarning, "reprlearn", False):
        return
    formatter = functools.partial(_one_line, _python=warnings.formatwarning)
    formatter.reprlearn = True
    warnings.formatwarning = formatter
