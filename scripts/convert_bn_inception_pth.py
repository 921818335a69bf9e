"""Converts the PyTorch BN-Inception ImageNet checkpoint to ccp's .npz weight file.

  python scripts/convert_bn_inception_pth.py bn_inception-52deb4733.pth \
      ~/.keras/models/bn_inception_imagenet.npz

The checkpoint is the widely distributed Caffe-converted one (state-dict keys such as
``conv1_7x7_s2.weight`` [O, I, kh, kw], ``conv1_7x7_s2_bn.running_mean``, ``last_linear.*``).
Kernels are transposed to Keras' [kh, kw, I, O], BatchNorm fields renamed (weight -> gamma,
bias -> beta, running_mean -> moving_mean, running_var -> moving_variance), the classifier is
dropped, and the result is checked by loading it into ccp's BN-Inception before the command
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


def convert(source, target):
    """Reads the .pth ``source``, writes the .npz ``target``; returns the number of arrays.

    Raises:
      ImportError: PyTorch is not installed.
      FileNotFoundError: ``source`` does not exist.
      ValueError: the checkpoint does not match BN-Inception (the message lists the entries).
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading a .pth checkpoint needs PyTorch: `pip install torch` (the CPU "
                          "build is enough), or convert on a machine that has it") from error
    if not os.path.isfile(source):
        raise FileNotFoundError(f"checkpoint {source!r} does not exist")
    from ccp.models import bn_inception

    state = _state_dict(torch.load(source, map_location="cpu"))
    arrays = bn_inception.from_torch_state_dict(
        {key: value.detach().cpu().numpy() for key, value in state.items()})
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    np.savez(target, **arrays)
    try:  # verifies every name and shape; the input size does not matter for the weights
        bn_inception.load_weights(bn_inception.bn_inception((64, 64, 3)), target)
    except ValueError:
        os.remove(target)
        raise
    return len(arrays)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert the PyTorch BN-Inception checkpoint to ccp's .npz weight file.")
    parser.add_argument("checkpoint", help="bn_inception-52deb4733.pth (PyTorch state dict)")
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
