"""ccp: Deep Metric Learning with Chance Constraints (CCP-DML) for TensorFlow/Keras.

Submodules are imported on first attribute access so that ``import ccp`` stays cheap and
``ccp.losses``, ``ccp.metrics`` ... resolve exactly as written in the public API;
``import ccp.defaults`` (plain constants) does not start TensorFlow.

ccp runs on Keras 3 with the TensorFlow backend only; importing ccp under another backend
(``KERAS_BACKEND`` or the ``backend`` entry of ``keras.json``) fails at once with a message.

Importing ccp before TensorFlow (or Keras) turns on TensorFlow's oneDNN CPU kernels
(``TF_ENABLE_ONEDNN_OPTS=1``) unless the variable is already set: see ``prefer_onednn``.
"""
import importlib
import json
import os
import sys

__version__ = "0.1.0"

_SUBMODULES = (
    "defaults",
    "ops",
    "layers",
    "losses",
    "projection",
    "metrics",
    "models",
    "training",
    "callbacks",
    "keras_compat",
    "tracking",
    "diagnostics",
    "export",
)

__all__ = list(_SUBMODULES)


def configured_keras_backend(environ=None):
    """The backend Keras 3 will use, read as Keras reads it, without importing Keras.

    ``KERAS_BACKEND`` wins; otherwise the ``backend`` entry of ``$KERAS_HOME/keras.json``
    (``KERAS_HOME`` defaults to ``~/.keras``); otherwise Keras' default, "tensorflow".
    """
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "keras.json")
    try:
        with open(path) as handle:
            return str(json.load(handle).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


def _check_keras_backend():
    backend = configured_keras_backend()
    if backend != "tensorflow":
        raise ImportError(
            f"ccp needs the TensorFlow backend of Keras 3, but Keras is configured for "
            f"{backend!r} (KERAS_BACKEND or the 'backend' entry of keras.json). Set "
            "KERAS_BACKEND=tensorflow before starting Python."
        )


def prefer_onednn(environ=None, modules=None):
    """Sets ``TF_ENABLE_ONEDNN_OPTS=1`` if TensorFlow is not loaded yet and the user chose nothing.

    TensorFlow's x86 wheels turn their oneDNN CPU kernels on by themselves only on CPUs with
    AVX512-VNNI/AMX (Cascade Lake and newer Xeons); elsewhere (AVX2 machines, most laptops and
    cloud VMs) the default Eigen kernels run a small CNN's training step 1.3x slower
    (BENCHMARKS.md, "Trainer vs keras.Model.fit and vs PyTorch"). TensorFlow reads the variable
    once, when it loads: a value set afterwards has no effect, which is why ccp sets it on
    import. An explicit ``TF_ENABLE_ONEDNN_OPTS`` (``0`` or ``1``) is never overridden. GPU and
    TPU kernels are not affected; CPU results may differ from the Eigen kernels' in the last
    bits (still the same numbers for the same seed, run after run).

    Returns:
      True if the variable was set here.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "tensorflow" in modules or "TF_ENABLE_ONEDNN_OPTS" in environ:
        return False
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


_check_keras_backend()
prefer_onednn()


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"ccp.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ccp' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
