"""Converts a BN-Inception ImageNet checkpoint to ccp's .npz weight file.

  python scripts/convert_bn_inception_pth.py bn_inception-52deb4733.pth \
      ~/.keras/models/bn_inception_imagenet.npz
  python scripts/convert_bn_inception_pth.py BNInception.h5 bn_inception_reference.npz

Two sources:
- ``.pth``: the widely distributed Caffe-converted PyTorch checkpoint (state-dict keys such as
  ``conv1_7x7_s2.weight`` [O, I, kh, kw], ``conv1_7x7_s2_bn.running_mean``, ``last_linear.*``).
  Kernels are transposed to Keras' [kh, kw, I, O], BatchNorm fields renamed (weight -> gamma,
  bias -> beta, running_mean -> moving_mean, running_var -> moving_variance), the classifier
  dropped. Input mean: Caffe's BGR (104, 117, 128). Read with ``torch.load(...,
  weights_only=True)`` (no code in the file runs).
- ``.h5``: the reference code's own BN-Inception, the Keras full-model file it loads with
  ``tf.keras.models.load_model`` (``BNInception.h5``; the reference defines no architecture in
  code, its layers and weights are those of this file): a Keras 2 HDF5 file whose
  ``model_weights`` group holds one group per layer (``layer_names`` / ``weight_names``
  attributes, ``LAYER/kernel:0`` ... datasets), with the checkpoint's layer names. Input mean:
  the reference's preprocessing, BGR 255 x ImageNet mean (103.53, 116.28, 123.675); the
  BatchNorm epsilon is taken from the file's ``model_config``.
The .npz records the input mean and the BatchNorm epsilon (``meta/...``), so
``build_embedding_model("bn_inception", weights=...)`` rebuilds exactly that network and
preprocessing; the result is checked by loading it into ccp's BN-Inception before the command
reports success.

Reading a .pth file needs PyTorch (the CPU build is enough); nothing else does. The output is
what ``ccp.models.build_embedding_model("bn_inception", weights="imagenet")`` loads from
$CCP_WEIGHTS_DIR (default ~/.keras/models), or pass its path as weights=PATH / --weights=PATH.
"""
import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _state_dict(checkpoint):
    """The ``{name: tensor}`` mapping inside a loaded checkpoint (plain or wrapped)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a state dict, got {type(checkpoint).__name__}")
    return {key[len("module."):] if key.startswith("module.") else key: value
            for key, value in checkpoint.items()}


def convert_state_dict(state, target):
    """Writes the ``{name: numpy array}`` PyTorch state dict ``state`` as the .npz ``target``.

    Returns:
      the number of weight arrays written.
    Raises:
      ValueError: the state dict does not match BN-Inception (the message lists the entries).
    """
    from ccp.models import bn_inception

    arrays = bn_inception.from_torch_state_dict(_state_dict(state))
    return bn_inception.write_weight_file(arrays, target, bn_inception.CAFFE_BGR_MEAN)


def convert_reference_h5(source, target):
    """Converts the reference code's Keras BN-Inception ``.h5`` (see the module docstring)."""
    from ccp.models import bn_inception

    epsilon = bn_inception.keras_model_bn_epsilon(source)
    arrays = bn_inception.read_weight_file(source)
    return bn_inception.write_weight_file(
        arrays, target, bn_inception.REFERENCE_BGR_MEAN,
        bn_inception.BN_EPSILON if epsilon is None else epsilon)


def convert(source, target):
    """Reads ``source`` (.pth or the reference's .h5), writes the .npz ``target``.

    Returns:
      the number of weight arrays written.
    Raises:
      ImportError: a .pth source and PyTorch is not installed.
      FileNotFoundError: ``source`` does not exist.
      ValueError: an unknown source type, or a checkpoint that does not match BN-Inception.
    """
    if not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint {source!r} does not exist")
    if source.endswith((".h5", ".hdf5")):
        return convert_reference_h5(source, target)
    if not source.endswith((".pth", ".pt")):
        raise ValueError(f"checkpoint {source!r}: expected the PyTorch .pth or the reference's "
                         "Keras .h5")
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading a .pth checkpoint needs PyTorch: `pip install torch` (the CPU "
                          "build is enough), or convert on a machine that has it") from error
    state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{source}: expected a state dict, got {type(state).__name__}")
    return convert_state_dict(
        {key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
         for key, value in state.items()}, target)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a BN-Inception checkpoint (PyTorch .pth or the reference's Keras "
                    ".h5) to ccp's .npz weight file.")
    parser.add_argument("checkpoint", help="bn_inception-52deb4733.pth (PyTorch state dict) or "
                                           "the reference code's BNInception.h5")
    parser.add_argument("output", help="the .npz to write, e.g. "
                                       "~/.keras/models/bn_inception_imagenet.npz")
    args = parser.parse_args(argv)
    output = os.path.expanduser(args.output)
    if not output.endswith(".npz"):
        parser.error(f"the output must be a .npz file, got {args.output!r}")
    try:
        count = convert(os.path.expanduser(args.checkpoint), output)
    except (ImportError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} arrays to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
