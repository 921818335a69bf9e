"""Loss components (distances, miners): their common base and their resolution from a name,
a config dict or an instance."""
import keras


class Component:
    """Base of a loss component configured by plain keyword arguments: Keras config round trip
    (``get_config`` / ``from_config``) and equality / hashing by type and config."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


def resolve(identifier, registry, base_class, what, none_allowed=False):
    """The ``base_class`` instance named or serialized by ``identifier``.

    Args:
      identifier: a key of ``registry``, a dict from ``keras.saving.serialize_keras_object``,
        or an instance of ``base_class`` (returned as it is).
      registry: ``{name: class}`` of the components that can be chosen by name.
      base_class: the components' base class.
      what: how the error message names the argument, e.g. "distance".
      none_allowed: None is a valid choice (no component) and resolves to None.
    """
    if identifier is None and none_allowed:
        return None
    if isinstance(identifier, base_class):
        return identifier
    if isinstance(identifier, str) and identifier in registry:
        return registry[identifier]()
    if isinstance(identifier, dict):
        component = keras.saving.deserialize_keras_object(identifier)
        if isinstance(component, base_class):
            return component
    choices = "None, one of" if none_allowed else "one of"
    raise ValueError(f"{what} must be {choices} {sorted(registry)} or a "
                     f"{base_class.__module__}.{base_class.__name__}, got {identifier!r}")
