"""Reading checkpoint files safely: the weights-only loader, and for the original NDT's and
STNDT's files (which pickle a yacs `CfgNode`, a dict subclass the weights-only loader will
not rebuild) a restricted unpickler whose `find_class` admits only `ALLOWED_GLOBALS`;
anything else raises `UnsafeCheckpointError` before it is called. This module is the only
place that unpickles with `weights_only=False`.
"""

from __future__ import annotations

import collections
import logging
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import torch
from yacs.config import CfgNode

logger = logging.getLogger(__name__)

# Everything the original's checkpoints pickle by name, and nothing else. Storage
# classes (torch.FloatStorage, ...) never reach this list: torch's own unpickler wrapper
# turns any name its storage table knows into a dtype tag before asking us.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # state_dict, tensor hooks
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("yacs.config", "CfgNode"): CfgNode,  # the pickled config and its sub-nodes
    ("builtins", "set"): set,  # CfgNode's deprecated-keys attribute
    ("__builtin__", "set"): set,  # the same, as protocol-2 pickles spell it
}
ALLOWED_GLOBALS: tuple[str, ...] = tuple(f"{m}.{n}" for m, n in _ALLOWED)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A pickle asked for a global outside `ALLOWED_GLOBALS`; nothing was executed."""


def _restricted_pickle_module(path: str) -> types.ModuleType:
    """A stand-in for the `pickle` module whose unpickler only resolves allow-listed names.

    torch.load subclasses `module.Unpickler` and calls `module.load` (older layouts). Every
    global a pickle names goes through `find_class` (REDUCE, NEWOBJ, INST/OBJ and copyreg
    extension codes included), so a refused name can never be called.
    """

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return _ALLOWED[(module, name)]
            except (KeyError, TypeError):
                raise UnsafeCheckpointError(
                    f"{path}: refuses to load '{module}.{name}': the original NDT "
                    f"checkpoint format only needs {', '.join(ALLOWED_GLOBALS)}, so this "
                    "file is not one (or has been tampered with); nothing in it was executed"
                ) from None

    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("nlb_ndt_restricted_pickle")
    module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    module.load = load  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


def read_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The raw dict stored in a snapshot file, ours or the original's, loaded safely.

    Tries the weights-only loader first (ours always loads that way). Only when that loader
    rejects the file's contents does it retry with the restricted unpickler.

    Args:
        path: the `.pth` file.
        map_location: where tensors are put (as `torch.load`'s argument).

    Raises:
        FileNotFoundError: `path` does not exist.
        UnsafeCheckpointError: the file pickles a global outside `ALLOWED_GLOBALS`.
        ValueError: the file holds something other than a snapshot dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only loader refuses any class it does not know (here: yacs CfgNode).
        logger.debug("%s: weights-only load refused (%s); trying the legacy allow-list",
                     path, str(exc).splitlines()[0] if str(exc) else exc)
        data = torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=_restricted_pickle_module(str(path)))
    if not isinstance(data, Mapping) or "state_dict" not in data:
        raise ValueError(f"{path}: not an NDT checkpoint (expected a dict with a "
                         f"'state_dict' entry, got {type(data).__name__})")
    return dict(data)
