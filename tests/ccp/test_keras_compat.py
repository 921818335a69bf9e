"""The Keras internals of ccp.keras_compat, checked against the installed Keras.

Each test names the internal it checks: when a Keras release changes one, this file fails by
that name (and nothing silently trains differently).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import ccp
from ccp import keras_compat


def test_optimizer_variable_key_is_the_slot_key():
    """Optimizer._var_key: the key per-variable learning-rate multipliers are filed under; it
    must match the variable the optimizer's update_step receives."""
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = ccp.training.AdamLRM(learning_rate=0.5)
    optimizer.build([variable])
    optimizer.set_lr_multiplier([variable], 4.0)
    seen = []
    original = ccp.training.AdamLRM.update_step

    class Probe(ccp.training.AdamLRM):
        def update_step(self, gradient, var, learning_rate):
            seen.append(keras_compat.optimizer_variable_key(self, var))
            return original(self, gradient, var, learning_rate)

    probe = Probe(learning_rate=0.5)
    probe.build([variable])
    probe.set_lr_multiplier([variable], 4.0)
    probe.apply_gradients([(tf.ones(3), variable)])
    assert seen == [keras_compat.optimizer_variable_key(probe, variable)]
    assert probe.lr_multiplier(variable) == 4.0


def test_nested_layers_finds_layers_inside_custom_layers():
    """Layer._flatten_layers(include_self=False, recursive=True)."""
    class Holder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.inner = keras.layers.BatchNormalization()

        def call(self, x):
            return self.inner(x)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Holder()(keras.layers.Dense(3)(inputs)))
    kinds = [type(layer).__name__ for layer in keras_compat.nested_layers(model)]
    assert "Holder" in kinds and "BatchNormalization" in kinds and "Dense" in kinds


def _tiny_model():
    inputs = keras.Input((5,))
    return keras.Model(inputs, keras.layers.Dense(3)(inputs))


def test_compiled_loss_is_found_on_the_stack():
    """Keras calls a callable loss from a keras.losses.Loss (its LossFunctionWrapper) inside
    Model.compute_loss: the loss sees the model on the stack, and nothing outside fit."""
    seen = []

    def loss_fn(y_true, y_pred):
        seen.append(keras_compat.calling_compiled_loss_model())
        return tf.reduce_mean(tf.square(y_pred))

    model = _tiny_model()
    model.compile("sgd", loss=loss_fn)
    model.fit(np.ones((4, 5), np.float32), np.zeros(4, np.int32), epochs=1, verbose=0)
    assert seen and all(found is model for found in seen)
    assert keras_compat.calling_compiled_loss_model() is None


@pytest.mark.parametrize("make_loss", [
    lambda: ccp.losses.CCPLoss(ccp.losses.ContrastiveLoss(), 2, 3, proxies_per_class=2),
    lambda: ccp.losses.ProxyAnchorLoss(2, 3),
])
def test_proxy_loss_in_compile_of_an_untracking_model_raises(make_loss):
    model = _tiny_model()
    model.compile("adam", loss=make_loss())
    x, y = np.ones((4, 5), np.float32), np.array([0, 0, 1, 1], np.int32)
    with pytest.raises(ValueError, match=r"would stay frozen.*ccp\.models\.MetricModel"):
        model.fit(x, y, epochs=1, verbose=0)
    plain = _tiny_model()
    plain.compile("adam", loss=ccp.losses.ContrastiveLoss())  # no variables: fine
    plain.fit(x, y, epochs=1, verbose=0)
