"""Not the library: the repository root's file. It only runs when Python imports the clone folder
itself as a package, i.e. when Python runs in the folder that holds the clone (its parent) and
``import ccp`` finds a clone named ``ccp`` before the library inside it (``ccp/ccp``). Without
this file that import gives an empty namespace package and ``ccp.losses`` fails with an
AttributeError far from the cause. Imported as ``ccp``, it loads the library from ``ccp/ccp`` in
its place and says so (a warning); under any other name (a clone named otherwise, pytest's view
of the root folder) it does nothing.
"""
import importlib.util as _util
import os as _os
import sys as _sys
import warnings as _warnings

if __name__ == "ccp":
    _library = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "ccp")
    if "_pytest" not in _sys.modules:  # pytest imports a root folder with __init__.py itself
        _warnings.warn(
            f"'import ccp' found the repository folder {_os.path.dirname(_library)} (Python runs "
            f"in its parent folder); loading the library from {_library} instead. Run from inside "
            "the clone, or install it (pip install -e), to import it directly.", stacklevel=2)
    _spec = _util.spec_from_file_location("ccp", _os.path.join(_library, "__init__.py"),
                                          submodule_search_locations=[_library])
    _module = _util.module_from_spec(_spec)
    _sys.modules["ccp"] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
