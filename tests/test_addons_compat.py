"""tensorflow-addons usage, unchanged but for the import line: signatures, defaults and `Addons>` names."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import reprlearn  # noqa: F401  (registers the Addons> names)
from reprlearn.layers import MaxUnpooling2D
from reprlearn.losses import (ContrastiveLoss, LiftedStructLoss, TripletHardLoss, TripletSemiHardLoss,
                              contrastive_loss, lifted_struct_loss, triplet_hard_loss, triplet_semihard_loss)
from reprlearn.losses.addons import ADDONS_OBJECTS
from tests import reference

# addons 0.23 signatures: argument names and defaults, in order.
ADDONS_SIGNATURES = {
    contrastive_loss: [("y_true", None), ("y_pred", None), ("margin", 1.0)],
    triplet_semihard_loss: [("y_true", None), ("y_pred", None), ("margin", 1.0), ("distance_metric", "L2")],
    triplet_hard_loss: [("y_true", None), ("y_pred", None), ("margin", 1.0), ("soft", False),
                        ("distance_metric", "L2")],
    lifted_struct_loss: [("labels", None), ("embeddings", None), ("margin", 1.0)],
    ContrastiveLoss: [("margin", 1.0)],
    TripletSemiHardLoss: [("margin", 1.0), ("distance_metric", "L2")],
    TripletHardLoss: [("margin", 1.0), ("soft", False), ("distance_metric", "L2")],
    LiftedStructLoss: [("margin", 1.0)],
    MaxUnpooling2D: [("pool_size", (2, 2)), ("strides", (2, 2)), ("padding", "SAME")],
}


@pytest.mark.parametrize("obj", list(ADDONS_SIGNATURES), ids=lambda o: o.__name__)
def test_signatures_and_defaults_equal_addons(obj):
    params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
    params = [p for p in params.values() if p.name != "self"]
    expected = ADDONS_SIGNATURES[obj]
    # addons' parameters lead, in order and all of them (a dropped one fails); reprlearn may add keywords after.
    assert [p.name for p in params][:len(expected)] == [name for name, _ in expected]
    assert [p.default for p in params[:len(expected)] if p.default is not inspect.Parameter.empty] == \
        [default for _, default in expected if default is not None]


def test_every_shipped_addons_name_is_covered():
    assert set(ADDONS_OBJECTS.values()) == set(ADDONS_SIGNATURES)


def test_max_unpooling_strides_default_to_two_whatever_the_pool_size():
    x = tf.reshape(tf.range(20, dtype=tf.float32), (1, 4, 5, 1))
    pooled, argmax = tf.nn.max_pool_with_argmax(x, ksize=[2, 3], strides=[2, 2], padding="VALID")
    restored = MaxUnpooling2D(pool_size=(2, 3), padding="VALID")(pooled, argmax)
    assert restored.shape == (1, 4, 5, 1)  # addons: (2 - 1) * 2 + 3 = 5
    kept = np.flatnonzero(restored.numpy().reshape(-1))
    np.testing.assert_array_equal(np.sort(kept), np.sort(argmax.numpy().reshape(-1)))


EMB = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
LABELS = np.repeat(np.arange(4), 4)


@pytest.mark.parametrize("name", ["lifted_struct_loss", "triplet_semihard_loss", "triplet_hard_loss",
                                  "TripletSemiHardLoss", "TripletHardLoss", "LiftedStructLoss"])
def test_addons_string_identifiers_compile_and_fit(name):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    by_string = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    by_string.set_weights(model.get_weights())
    model.compile("sgd", loss=ADDONS_OBJECTS[name]() if name[0].isupper() else ADDONS_OBJECTS[name])
    by_string.compile("sgd", loss=f"Addons>{name}")
    want = model.fit(EMB, LABELS, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    got = by_string.fit(EMB, LABELS, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    assert got == pytest.approx(want, rel=1e-6) and want[0] > 0


@pytest.mark.parametrize("name", ["contrastive_loss", "ContrastiveLoss"])
def test_addons_contrastive_by_string_on_a_distance_output(name):
    # addons' contrastive loss takes a distance per pair (y = 1: matching), e.g. a Siamese head's output.
    keras.utils.set_random_seed(0)
    distances = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="softplus")])
    by_string = keras.models.clone_model(distances)
    by_string.set_weights(distances.get_weights())
    match = (np.arange(16) % 2).astype(np.float32)
    distances.compile("sgd", loss=ADDONS_OBJECTS[name]() if name[0].isupper() else ADDONS_OBJECTS[name])
    by_string.compile("sgd", loss=f"Addons>{name}")
    want = distances.fit(EMB, match, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    got = by_string.fit(EMB, match, batch_size=16, epochs=2, verbose=0, shuffle=False).history["loss"]
    assert got == pytest.approx(want, rel=1e-6) and want[0] > 0


def test_addons_era_serialized_configs_resolve():
    loss = keras.losses.deserialize({"class_name": "Addons>TripletHardLoss",
                                     "config": {"margin": 0.5, "soft": True, "distance_metric": "L2"}})
    assert isinstance(loss, TripletHardLoss) and (loss.margin, loss.soft) == (0.5, True)
    assert float(loss(LABELS, EMB)) == pytest.approx(reference.addons_triplet_hard(LABELS, EMB, 0.5, soft=True),
                                                     rel=1e-5)
    layer = keras.layers.deserialize({"class_name": "Addons>MaxUnpooling2D", "config": {"pool_size": [2, 2]}})
    assert isinstance(layer, MaxUnpooling2D) and layer.strides == (2, 2)
    # reprlearn's own saves keep their reprlearn> names.
    assert keras.losses.serialize(TripletSemiHardLoss())["registered_name"] == "reprlearn>TripletSemiHardLoss"


def test_addons_positional_calls_give_addons_numbers():
    assert float(triplet_semihard_loss(LABELS, EMB, 0.7)) == pytest.approx(
        reference.addons_triplet_semihard(LABELS, EMB, 0.7), rel=1e-5)
    assert float(TripletSemiHardLoss(0.7)(LABELS, EMB)) == pytest.approx(
        reference.addons_triplet_semihard(LABELS, EMB, 0.7), rel=1e-5)
    assert float(lifted_struct_loss(LABELS, EMB, 0.7)) == pytest.approx(
        reference.addons_lifted_struct(LABELS, EMB, 0.7), rel=1e-5)
    np.testing.assert_allclose(contrastive_loss([1, 0], [0.2, 0.3]).numpy(), [0.04, 0.49], rtol=1e-6)
