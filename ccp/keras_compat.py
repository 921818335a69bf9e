"""Every Keras internal ccp relies on, in one module.

Keras 3 has no public API for these; each is wrapped here once, and
``tests/ccp/test_keras_compat.py`` checks each against the installed Keras so a Keras release
that changes one fails that test by name instead of breaking training somewhere else.

- :func:`optimizer_variable_key`: the identity key a Keras optimizer files a variable's slots
  under (``Optimizer._var_key``); the per-variable learning-rate multipliers are keyed by it
  because ``update_step`` receives the backend variable (a per-replica component under
  ``tf.distribute``), which only this key matches in every case.
- :func:`nested_layers`: every layer nested in a layer (``Layer._flatten_layers``); the public
  ``Model.layers`` only lists direct children of models, not layers held by custom layers.
- :func:`calling_compiled_loss_model`: the model whose ``compile(loss=...)`` is calling a loss
  right now, found on the Python call stack (Keras calls a plain callable loss from its
  ``LossFunctionWrapper.call``, a ``keras.losses.Loss``, inside ``Model.compute_loss``, and
  hands the loss nothing that names the model); :func:`check_compiled_loss_tracked` uses it
  so that a loss with trainable variables (proxies) never trains them frozen under
  ``compile(loss=...)``.
"""
import inspect

import keras


def optimizer_variable_key(optimizer, variable):
    """The key ``optimizer`` files ``variable``'s slots under (hashable)."""
    return optimizer._var_key(variable)


def nested_layers(layer):
    """Every layer nested inside ``layer`` (models, layers holding layers), depth first."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def calling_compiled_loss_model(max_depth=12):
    """The ``keras.Model`` whose compiled loss is the caller of the current call, or None.

    Looks up the Python stack (trace time only, never inside a running graph): a frame of a
    ``keras.losses.Loss`` method (Keras' compiled loss and the ``LossFunctionWrapper`` it puts
    around a plain callable loss), then, above it, a frame of a ``keras.Model`` method
    (``compute_loss``).

    Args:
      max_depth: frames searched above the caller.
    Returns:
      the model, or None when the loss was not called by a compiled model.
    """
    frame = inspect.currentframe()
    wrapped = False
    try:
        for _ in range(max_depth):
            frame = frame.f_back
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.losses.Loss):
                wrapped = True
            elif wrapped and isinstance(owner, keras.Model):
                return owner
        return None
    finally:
        del frame


def check_compiled_loss_tracked(loss):
    """Raises when a compiled model calls ``loss`` without training its variables.

    ``keras.Model.compile(loss=layer)`` calls the layer but differentiates only the model's own
    trainable variables: a proxy loss would train with frozen proxies and a falling loss.

    Args:
      loss: a layer with ``trainable_variables`` (a ``ccp.losses`` loss).
    Raises:
      ValueError: the calling model does not track some of them (names the fix).
    """
    if not loss.trainable_variables:
        return
    model = calling_compiled_loss_model()
    if model is None:
        return
    tracked = {id(v) for v in model.trainable_variables}
    missing = [v.name for v in loss.trainable_variables if id(v) not in tracked]
    if missing:
        raise ValueError(
            f"{type(loss).__name__} owns trainable variables ({', '.join(missing)}) that model "
            f"{model.name!r} does not train: compile(loss=...) updates only the model's own "
            f"variables, so they would stay frozen. Train with "
            f"ccp.models.MetricModel(embedder, loss) and compile it without a loss, or keep "
            f"the loss as an attribute of your own keras.Model (its variables are then tracked)")
