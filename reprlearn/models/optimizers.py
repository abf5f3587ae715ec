"""Adam with a learning rate of their own for named layers: fine-tuning copied, pretrained layers gently, training
Proxy-Anchor's proxies fast.

`model.init_learning_rate_factor` uses it (the layers `model.init_from` copied, or a pretrained backbone,
move at that factor of the learning rate, constant or scheduled), and so does
`loss.proxy_learning_rate_factor`; every other variable steps at the full rate.

Example:
    optimizer = LayerRateAdam(1e-3, layer_factors={"conv1": 0.1, "fc": 0.1})
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="reprlearn")
class LayerRateAdam(keras.optimizers.Adam):
    """Adam whose variables in the named layers (a layer name in the variable's path) step at their own factor × the
    learning rate: slower for copied or pretrained layers, faster for Proxy-Anchor's proxies.

    Example:
        LayerRateAdam(1e-3, layer_factors={"backbone": 0.1, "class_cosines": 100.0})

    Args:
        learning_rate: a float or a schedule, as for Adam.
        layer_factors: layer name → factor > 0 of the learning rate.
        **kwargs: Adam's other arguments.
    """

    def __init__(self, learning_rate=0.001, layer_factors: dict | None = None, **kwargs):
        super().__init__(learning_rate=learning_rate, **kwargs)
        factors = dict(layer_factors or {})
        bad = {name: value for name, value in factors.items() if not float(value) > 0.0}
        if bad:
            raise ValueError(f"layer_factors must all be > 0. Received: layer_factors={bad}")
        self.layer_factors = {name: float(value) for name, value in factors.items()}
        self._factor_of: dict[int, float] = {}

    def build(self, var_list):
        super().build(var_list)
        # Decided once per variable, from its path ("conv1/kernel", or "sequential/conv1/kernel" when a model's
        # scope built it), before any step is traced.
        self._factor_of = {}
        for variable in var_list:
            named = [self.layer_factors[part] for part in variable.path.split("/")[:-1] if part in self.layer_factors]
            if named:
                self._factor_of[self._get_variable_index(variable)] = named[-1]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factor_of.get(self._get_variable_index(variable))
        if factor is not None:
            learning_rate = learning_rate * factor
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "layer_factors": self.layer_factors}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Saved by reprlearn 0.3 and earlier: one factor for a list of slow layers.
        config = dict(config)
        slow_layers, factor = config.pop("slow_layers", None), config.pop("factor", None)
        if slow_layers is not None:
            config["layer_factors"] = {name: factor for name in slow_layers}
        return super().from_config(config, custom_objects=custom_objects)
