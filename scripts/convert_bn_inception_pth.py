"""Converts the PyTorch BN-Inception ImageNet checkpoint to ccp's .npz weight file.

  python scripts/convert_bn_inception_pth.py bn_inception-52deb4733.pth \
      ~/.keras/models/bn_inception_imagenet.npz

Needs torch (CPU build is enough) only for reading the .pth file. The result is what
``build_embedding_model("bn_inception", weights="imagenet")`` loads (from $CCP_WEIGHTS_DIR or
~/.keras/models), or pass its path as --weights=PATH.
"""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv):
    if len(argv) != 3:
        print(__doc__)
        return 2
    source, target = argv[1], argv[2]
    try:
        import torch
    except ImportError:
        print("error: reading a .pth file needs PyTorch: pip install torch (the CPU build is enough)",
              file=sys.stderr)
        return 1
    if not os.path.isfile(source):
        print(f"error: checkpoint {source!r} does not exist", file=sys.stderr)
        return 1
    from ccp.models import bn_inception

    state = torch.load(source, map_location="cpu")
    arrays = bn_inception.from_torch_state_dict({k: v.numpy() for k, v in state.items()})
    model = bn_inception.bn_inception()
    expected = bn_inception.weight_arrays(model)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        print(f"error: the checkpoint lacks {len(missing)} entries, e.g. {missing[:5]}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    np.savez(target, **arrays)
    bn_inception.load_weights(model, target)  # verifies every shape
    print(f"wrote {len(arrays)} arrays to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
