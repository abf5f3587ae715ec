"""reprlearn: representation learning for Keras 3 (metric learning, autoencoders, evaluation, export).

Importing the package registers every serializable object (losses, miners, metrics, layers,
models), as Keras does for its built-ins, so saved `.keras` files and checkpoints reload in
any process after `import reprlearn`. The tensorflow-addons names are registered too
(`"Addons>TripletSemiHardLoss"`, `"Addons>lifted_struct_loss"`, ...), so addons-era string
identifiers and saved configs resolve.

The package reads as the pipeline, and imports run one way (a test holds the contract):
errors → ops, data → config → layers, losses, metrics, index, models → runs → evaluation →
training → export → cli.
"""

from reprlearn._version import __version__  # noqa: E402,F401

from reprlearn._startup import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

# Imported for their registrations; each module registers its own objects.
from reprlearn import layers, losses, metrics, models  # noqa: E402,F401
from reprlearn.losses import miners  # noqa: E402,F401
from reprlearn.losses.addons import register_addons_names  # noqa: E402

register_addons_names()

from reprlearn._moved import alias_moved_modules  # noqa: E402

alias_moved_modules()

from reprlearn.errors import ReprlearnError, ReprlearnWarning, install_warning_format  # noqa: E402

install_warning_format()   # a ReprlearnWarning prints as one line
from reprlearn.runs import load_run  # noqa: E402  (a run folder's config, record and evaluation arrays)

__all__ = ["ReprlearnError", "ReprlearnWarning", "__version__", "load_run"]
