"""The tensorflow-addons names (`Addons>...`), so addons-era string identifiers and saved configs resolve.

`model.compile(loss="Addons>triplet_semihard_loss")`, a `.keras` or `.h5` config saved by an addons
user that names `"Addons>TripletSemiHardLoss"`, and `keras.layers.deserialize` of an
`"Addons>MaxUnpooling2D"` all find reprlearn's objects, which take addons' arguments and
defaults. reprlearn's own saves keep their `reprlearn>` names.
"""

from __future__ import annotations

import keras

from reprlearn.layers.unpooling import MaxUnpooling2D
from reprlearn.losses.contrastive import ContrastiveLoss, contrastive_loss
from reprlearn.losses.lifted import LiftedStructLoss, lifted_struct_loss
from reprlearn.losses.triplet import TripletHardLoss, TripletSemiHardLoss, triplet_hard_loss, triplet_semihard_loss

# Every object tensorflow-addons 0.23 registered under these names and reprlearn ships.
ADDONS_OBJECTS = {
    "ContrastiveLoss": ContrastiveLoss, "contrastive_loss": contrastive_loss,
    "TripletSemiHardLoss": TripletSemiHardLoss, "triplet_semihard_loss": triplet_semihard_loss,
    "TripletHardLoss": TripletHardLoss, "triplet_hard_loss": triplet_hard_loss,
    "LiftedStructLoss": LiftedStructLoss, "lifted_struct_loss": lifted_struct_loss,
    "MaxUnpooling2D": MaxUnpooling2D,
}


def register_addons_names() -> None:
    """Makes `Addons>NAME` resolve for each of `ADDONS_OBJECTS` (idempotent).

    Serialized configs (`{"class_name": "Addons>TripletSemiHardLoss", ...}`) resolve through Keras'
    global custom objects. Plain strings in `compile(loss="Addons>...")` do not: Keras 3 looks those
    up only in its own table of built-in losses, which `keras.losses.get` reads from its module
    globals, so the loss names are added there too. Only lookups gain entries; each object still
    serializes under its `reprlearn>` name.
    """
    custom_objects = keras.saving.get_custom_objects()
    for name, obj in ADDONS_OBJECTS.items():
        custom_objects[f"Addons>{name}"] = obj
    builtin_losses = keras.losses.get.__globals__.get("ALL_OBJECTS_DICT")
    if isinstance(builtin_losses, dict):
        for name, obj in ADDONS_OBJECTS.items():
            if name != "MaxUnpooling2D":
                builtin_losses[f"Addons>{name}"] = obj
