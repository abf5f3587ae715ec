"""Training under tf.distribute: global-batch mining equals the single-device step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
# Weights are float32 of magnitude < 1: steps that agree to rounding differ by a few 1e-8.
ROUNDING = 1e-7


@pytest.fixture(scope="module")
def replica_steps() -> dict:
    """One `model.fit` step per loss on one device and on two logical CPUs, from a fresh interpreter."""
    done = subprocess.run([sys.executable, str(HERE / "replica_steps.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


LOSS_NAMES = ["contrastive", "triplet_semihard", "triplet_hard", "triplet_batch_all", "lifted_struct",
              "addons_semihard"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_two_replicas_step_like_one_device_on_the_global_batch(replica_steps, name):
    assert replica_steps["replicas"] == 2
    steps, logs = replica_steps[name]["steps"], replica_steps[name]["logs"]
    single, gathered = np.array(steps["single"]), np.array(steps["cross_replica"])
    assert np.abs(single).max() > 1e-3  # the step moved the weights
    np.testing.assert_allclose(gathered, single, rtol=1e-5, atol=ROUNDING)
    # The logged loss and the training metrics describe the global batch too.
    for key, value in logs["single"].items():
        assert logs["cross_replica"][key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_without_cross_replica_each_replica_mines_its_own_slice(replica_steps, name):
    steps, logs = replica_steps[name]["steps"], replica_steps[name]["logs"]
    single, local = np.array(steps["single"]), np.array(steps["local"])
    # Mining within half the batch gives another loss and another step: why cross_replica exists.
    assert np.abs(local - single).max() > 1e-3
    assert logs["local"]["mean_negative_distance"] != pytest.approx(logs["single"]["mean_negative_distance"],
                                                                    rel=1e-5)
