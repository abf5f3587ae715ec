"""reprlearn: representation learning for Keras 3 (metric learning, autoencoders, evaluation, export).

Importing the package registers every serializable object (losses, miners, metrics, layers,
models), as Keras does for its built-ins, so saved `.keras` files and checkpoints reload in
any process after `import reprlearn`. The tensorflow-addons names are registered too
(`"Addons>TripletSemiHardLoss"`, `"Addons>lifted_struct_loss"`, ...), so addons-era string
identifiers and saved configs resolve.
"""

__version__ = "0.2.0"

from reprlearn._startup import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

# Imported for their registrations; each module registers its own objects.
from reprlearn import layers, losses, metrics, miners, models  # noqa: E402,F401
from reprlearn.losses.addons import register_addons_names  # noqa: E402

register_addons_names()

from reprlearn.runs import load_run  # noqa: E402  (a run folder's config, record and evaluation arrays)

__all__ = ["__version__", "load_run"]
