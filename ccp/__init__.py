"""ccp: Deep Metric Learning with Chance Constraints (CCP-DML) for TensorFlow/Keras.

Submodules are imported on first attribute access so that ``import ccp`` stays cheap and
``ccp.losses``, ``ccp.metrics`` ... resolve exactly as written in the public API.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "ops",
    "layers",
    "losses",
    "projection",
    "metrics",
    "models",
    "training",
    "export",
)

__all__ = list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"ccp.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ccp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
