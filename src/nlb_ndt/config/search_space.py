"""Search spaces: the original's flattened-key JSON, checked and turned into plain objects.

Schema (one entry per searched config key, keyed by the dotted yacs name):

    {"TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.4, "sample_fn": "uniform"},
     "TRAIN.WEIGHT_DECAY": {"low": 1e-8, "high": 1e-3, "sample_fn": "loguniform"},
     "MODEL.CONTEXT_FORWARD": {"low": 10, "high": 100, "sample_fn": "randint"},
     "TRAIN.MASK_MAX_SPAN": {"opts": [1, 2, 3]}}

Fields:
    low, high: bounds. "uniform" / "loguniform" draw reals in [low, high]; "randint"
        draws integers low..high-1 (the upper bound is excluded, as in `ray.tune.randint`).
    sample_fn: "uniform" (the default, as in the original), "loguniform", "randint" or
        "choice". "choice" needs `opts` and no bounds; `opts` alone implies "choice".
    opts: the list of values of a categorical dimension.
    explore_wt, enforce_limits, is_integer: leftovers of the original's population-based
        training, accepted and ignored (as the original did).

Any other field, an unknown config key, or a dimension whose values cannot be merged into
its key's type is rejected with a message that names the key and the file. This module
imports neither Ray nor skopt: `nlb_ndt.hyperopt` maps these objects onto skopt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from yacs.config import CfgNode as CN

from nlb_ndt.config.defaults import coerce_to_default, config_value, get_cfg_defaults

SAMPLE_FNS = ("uniform", "loguniform", "randint", "choice")
_FIELDS = {"low", "high", "sample_fn", "opts"}
_IGNORED_FIELDS = {"explore_wt", "enforce_limits", "is_integer"}


class SearchSpaceError(ValueError):
    """A search-space file that does not follow the schema above."""


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter.

    Attributes:
        key: dotted config key, e.g. "TRAIN.LR.INIT".
        sample_fn: "uniform", "loguniform", "randint" or "choice".
        low, high: bounds (None for "choice"); for "randint" `high` is excluded.
        opts: the values of a "choice" dimension (None otherwise).
    """

    key: str
    sample_fn: str
    low: float | int | None = None
    high: float | int | None = None
    opts: tuple | None = None

    def contains(self, value: Any) -> bool:
        """Whether `value` is a point of this dimension (for checks and tests)."""
        if self.sample_fn == "choice":
            return value in self.opts
        if self.sample_fn == "randint":
            return isinstance(value, int) and self.low <= value < self.high
        return isinstance(value, float) and self.low <= value <= self.high

    def to_json(self) -> dict[str, Any]:
        """The schema entry that reproduces this dimension."""
        if self.sample_fn == "choice":
            return {"opts": list(self.opts)}
        return {"low": self.low, "high": self.high, "sample_fn": self.sample_fn}


def _fits(value: Any, default: Any) -> bool:
    """Whether `value` merges into a key whose default is `default` (config's one rule)."""
    try:
        coerce_to_default(value, default)
    except TypeError:
        return False
    return True


def _number(value: Any, what: str, where: str) -> float | int:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        raise SearchSpaceError(f"{where}: {what} must be a finite number, got {value!r}")
    return value


def _parse_entry(key: str, entry: Any, default: Any, where: str) -> Dimension:
    if not isinstance(entry, Mapping):
        raise SearchSpaceError(f"{where}: the value must be an object with low/high/sample_fn "
                               f"or opts, got {entry!r}")
    unknown = sorted(set(entry) - _FIELDS - _IGNORED_FIELDS)
    if unknown:
        raise SearchSpaceError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
                               f"allowed: low, high, sample_fn, opts")
    sample_fn = entry.get("sample_fn", "choice" if "opts" in entry else "uniform")
    if sample_fn not in SAMPLE_FNS:
        raise SearchSpaceError(f"{where}: sample_fn {sample_fn!r} is not one of "
                               f"{', '.join(SAMPLE_FNS)}")
    is_int_key = isinstance(default, int) and not isinstance(default, bool)

    if sample_fn == "choice":
        if "low" in entry or "high" in entry or "opts" not in entry:
            raise SearchSpaceError(f"{where}: a choice needs 'opts' (a list) and no low/high")
        opts = entry["opts"]
        if not isinstance(opts, list) or not opts:
            raise SearchSpaceError(f"{where}: 'opts' must be a non-empty list, got {opts!r}")
        for opt in opts:
            if not _fits(opt, default):
                raise SearchSpaceError(f"{where}: option {opt!r} does not fit the key's type "
                                       f"({type(default).__name__})")
        if len(set(map(repr, opts))) != len(opts):
            raise SearchSpaceError(f"{where}: 'opts' has repeated values")
        opts = tuple(float(o) if isinstance(default, float) else o for o in opts)
        return Dimension(key, "choice", opts=opts)

    if "opts" in entry:
        raise SearchSpaceError(f"{where}: 'opts' only goes with sample_fn 'choice'")
    if "low" not in entry or "high" not in entry:
        raise SearchSpaceError(f"{where}: {sample_fn} needs both 'low' and 'high'")
    low = _number(entry["low"], "low", where)
    high = _number(entry["high"], "high", where)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise SearchSpaceError(f"{where}: the key holds a {type(default).__name__}; "
                               f"search it with 'opts'")
    if sample_fn == "randint":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise SearchSpaceError(f"{where}: randint bounds must be integers, "
                                   f"got {low!r}, {high!r}")
        low, high = int(low), int(high)
        if high <= low:
            raise SearchSpaceError(f"{where}: randint draws low..high-1, so high ({high}) "
                                   f"must exceed low ({low})")
        return Dimension(key, "randint", low, high)
    if is_int_key:
        raise SearchSpaceError(f"{where}: the key holds an integer; use sample_fn 'randint' "
                               f"(integers low..high-1)")
    if not high > low:
        raise SearchSpaceError(f"{where}: high ({high}) must exceed low ({low})")
    if sample_fn == "loguniform" and low <= 0:
        raise SearchSpaceError(f"{where}: loguniform needs low > 0, got {low}")
    return Dimension(key, sample_fn, float(low), float(high))


def parse_search_space(data: Any, cfg: CN,
                       source: str = "<search space>") -> dict[str, Dimension]:
    """Check a decoded search-space object against the config and return its dimensions.

    Args:
        data: the decoded JSON object ({dotted key: entry}).
        cfg: the config whose keys may be searched (normally the defaults).
        source: where `data` came from, for error messages (a file path).

    Returns:
        {dotted key: Dimension}, in file order.

    Raises:
        SearchSpaceError: naming the offending key (or field) and `source`.
    """
    if not isinstance(data, Mapping) or not data:
        raise SearchSpaceError(f"{source}: a search space is a non-empty JSON object of "
                               f"{{\"SECTION.KEY\": {{low, high, sample_fn}}}} entries")
    dims: dict[str, Dimension] = {}
    for key, entry in data.items():
        where = f"{source}: {key}"
        try:
            default = config_value(cfg, key)
        except KeyError:
            default = None
        if default is None or isinstance(default, Mapping):
            raise SearchSpaceError(f"{where}: unknown config key (see "
                                   f"nlb_ndt/config/defaults.py for the valid keys)")
        dims[key] = _parse_entry(key, entry, default, where)
    return dims


def load_search_space(path: str | Path, cfg: CN | None = None) -> dict[str, Dimension]:
    """Read and check a search-space JSON file (see the module docstring for the schema).

    Args:
        path: the JSON file.
        cfg: config whose keys may be searched (default: `nlb_ndt.config.defaults` defaults).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"{path}: search-space file not found; run "
                               f"`python generate_all_configs.py`") from None
    except json.JSONDecodeError as exc:
        raise SearchSpaceError(f"{path}: not valid JSON ({exc})") from None
    return parse_search_space(data, get_cfg_defaults() if cfg is None else cfg, str(path))


def to_json(dims: Mapping[str, Dimension]) -> dict[str, dict[str, Any]]:
    """The schema object that reproduces `dims` (as written into an experiment folder)."""
    return {key: dim.to_json() for key, dim in dims.items()}
