"""Adam with a slower learning rate for named layers: fine-tuning copied, pretrained layers gently.

`model.init_learning_rate_factor` uses it: the layers `model.init_from` copied move at that factor of
the learning rate (constant or scheduled), every other variable at the full rate.

Example:
    optimizer = LayerRateAdam(1e-3, slow_layers=["conv1", "conv2", "fc"], factor=0.1)
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="reprlearn")
class LayerRateAdam(keras.optimizers.Adam):
    """Adam whose variables in `slow_layers` (a layer name in the variable's path) step at `factor` × the learning
    rate.

    Args:
        learning_rate: a float or a schedule, as for Adam.
        slow_layers: layer names whose variables move slower.
        factor: the slow layers' share of the learning rate, in (0, 1].
        **kwargs: Adam's other arguments.
    """

    def __init__(self, learning_rate=0.001, slow_layers=(), factor: float = 1.0, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if not 0.0 < float(factor) <= 1.0:
            raise ValueError(f"factor must be in (0, 1]. Received: factor={factor!r}")
        self.slow_layers, self.factor = list(slow_layers), float(factor)
        self._slow_indices: set[int] = set()

    def build(self, var_list):
        super().build(var_list)
        # Decided once per variable, from its path ("conv1/kernel", or "sequential/conv1/kernel" when a model's
        # scope built it), before any step is traced.
        slow = set(self.slow_layers)
        self._slow_indices = {self._get_variable_index(v) for v in var_list if slow & set(v.path.split("/")[:-1])}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._slow_indices:
            learning_rate = learning_rate * self.factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "slow_layers": self.slow_layers, "factor": self.factor}
