"""Save and load snapshots: our plain-dict format, the original AE/NDT and STNDT `.pth` files.

Our format is a dict of plain types only (tensors, str, int, float, dict), written with
`torch.save`, so `torch.load(weights_only=True)` reads it and no code in it can run:

    format          "nlb_ndt"
    format_version  1
    state_dict      {parameter or buffer name: tensor (on CPU)}
    config          the run's resolved config, `cfg.dump()` YAML text
    num_neurons     N = N_in + N_out
    trial_length    T = T_obs + T_fwd (bins)
    max_spikes      held-in counts are clamped to this at inference
    n_heldin, t_obs, bin_ms, dataset, epoch, trial_id, kind ("lve" | "lfve" | "cobps" | ...)
    metrics         {name: float}
    versions        {library: version string}

The original's files (released on Zenodo with AESMTE3) are a dict with state_dict,
optim_state, lr_scheduler, config (a pickled yacs `CfgNode`), best_val, best_unmasked_val,
best_r2, max_spikes, num_neurons, trial_length and extra_state. STNDT's add best_cobps and
best_contrast, store max_spikes without the NDT's +3 and name modules spatial_*, src_decoder
(MODEL.NAME is the NDT's). A weights-only load cannot rebuild a `CfgNode`, so these files go
through a restricted unpickler (nlb_ndt.model.safe_load). lfads-torch models exported as
{"format": "lfads-torch", "state_dict", "hparams"} load weights-only too. Loading never
creates the directories a legacy config names (the original's loader made
`config.LOG_DIR`, a path on the training machine).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from yacs.config import CfgNode

from nlb_ndt.atomic import atomic_write
from nlb_ndt.config.defaults import (
    REMOVED_KEYS,
    coerce_to_default,
    get_cfg_defaults,
    warn_removed_key,
)
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.lfads import EXPORT_FORMAT as LFADS_FORMAT
from nlb_ndt.model.lfads import load_lfads_export
from nlb_ndt.model.ndt import PositionalEncoding
from nlb_ndt.model.safe_load import read_checkpoint
from nlb_ndt.model.stndt import is_stndt_state, stndt_state_dict
from nlb_ndt.runtime import library_versions

logger = logging.getLogger(__name__)

FORMAT = "nlb_ndt"
FORMAT_VERSION = 1
LEGACY_FORMAT = "ae"
STNDT_FORMAT = "stndt"
_LEGACY_FIELDS = ("best_val", "best_cobps", "best_contrast", "best_unmasked_val", "best_r2",
                  "extra_state")  # the records the original's and STNDT's files carry

# Extra fields `save_checkpoint` accepts, with the plain type each is stored as.
_INFO_FIELDS: dict[str, type] = {
    "n_heldin": int, "t_obs": int, "bin_ms": int, "dataset": str, "epoch": int,
    "trial_id": str, "kind": str,
}

def weights_digest(model: torch.nn.Module) -> str:
    """sha1 of a model's state dict (names, dtypes, shapes and values), to spot copies."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: CfgNode,
                    **info: Any) -> Path:
    """Write `model` and everything needed to rebuild it to `path`, atomically.

    Args:
        path: destination file (its folder is created if missing).
        model: an NDT (needs `num_neurons`, `trial_length` and `max_spikes` attributes).
        cfg: the run's resolved config; stored as YAML text.
        **info: any of n_heldin, t_obs, bin_ms, dataset, epoch, trial_id, kind (plain
            values), metrics ({name: float}) and versions ({name: str}; defaults to the
            installed versions). bin_ms and dataset default to cfg.DATA.

    Returns:
        The path written.

    Raises:
        TypeError: an unknown field in `info`.
    """
    unknown = set(info) - set(_INFO_FIELDS) - {"metrics", "versions"}
    if unknown:
        raise TypeError(f"save_checkpoint: unknown fields {sorted(unknown)}; "
                        f"known: {sorted(_INFO_FIELDS) + ['metrics', 'versions']}")
    # A torch.compile wrapper prefixes every state-dict key with "_orig_mod."; store the
    # module it wraps so the file loads into a plain model.
    model = getattr(model, "_orig_mod", model)
    record: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # A plain dict of CPU tensors: no OrderedDict metadata, no device tags.
        "state_dict": {k: v.detach().to("cpu", copy=True)
                       for k, v in model.state_dict().items()},
        "config": cfg.dump(),
        "num_neurons": int(model.num_neurons),
        "trial_length": int(model.trial_length),
        "max_spikes": int(model.max_spikes),
        "bin_ms": int(cfg.DATA.BIN_MS),
        "dataset": str(cfg.DATA.DATASET),
    }
    for key, kind in _INFO_FIELDS.items():
        if info.get(key) is not None:
            record[key] = kind(info[key])
    record["metrics"] = {str(k): float(v) for k, v in (info.get("metrics") or {}).items()}
    versions = info.get("versions")
    record["versions"] = {str(k): str(v) for k, v in
                          (versions if versions is not None else library_versions()).items()}

    path = Path(path)
    with atomic_write(path) as tmp:  # readers never see a half-written snapshot
        torch.save(record, tmp)
    return path


def _merge_known(node: CfgNode, other: Mapping[str, Any], prefix: str = "") -> None:
    """Merge `other` into `node` in place, keeping only keys `node` already has.

    Old files carry keys we dropped (and a future file may carry keys we do not know yet);
    those are skipped with a debug line. A known key with a value of the wrong type is
    skipped with a warning, since that default may change the model that gets built.
    """
    for key, value in other.items():
        name = f"{prefix}{key}"
        if key not in node:
            if name in REMOVED_KEYS:
                warn_removed_key(name, source="a checkpoint's config")
            else:
                logger.debug("checkpoint config: ignoring unknown key %s", name)
            continue
        current = node[key]
        if isinstance(current, CfgNode):
            if isinstance(value, Mapping):
                _merge_known(current, value, f"{name}.")
            else:
                logger.warning("checkpoint config: %s is %r, expected a section; "
                               "keeping the default", name, value)
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        try:
            node[key] = coerce_to_default(value, current, key=name)
        except TypeError:
            logger.warning("checkpoint config: %s=%r does not fit the type of its default "
                           "%r; keeping the default", name, value, current)


def _config_from(stored: Any, path: Path) -> CfgNode:
    """Our defaults with the stored config (YAML text or a mapping) merged in."""
    if isinstance(stored, str):
        stored = CfgNode.load_cfg(stored)
    if not isinstance(stored, Mapping):
        raise ValueError(f"{path}: the stored config is a {type(stored).__name__}, "
                         "expected YAML text or a yacs CfgNode")
    cfg = get_cfg_defaults()
    _merge_known(cfg, stored)
    return cfg


def _as_int(value: Any, what: str, path: Path) -> int:
    value = value.item() if isinstance(value, torch.Tensor) else value
    try:
        if int(value) == value:
            return int(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{path}: {what} is {value!r}, expected an integer")


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars inside nested containers -> Python numbers / lists."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_positions(model: torch.nn.Module, path: Path) -> None:
    """Refuse learned-position indices outside the table (the original's OFFSET bug: its +1
    made them 1..T for T rows), naming the file, rather than an IndexError at first use."""
    for name, enc in model.named_modules():
        if not isinstance(enc, PositionalEncoding) or not enc.learnable:
            continue
        pe, rows = enc.pe, enc.pos_embedding.num_embeddings
        if pe.numel() and (int(pe.min()) < 0 or int(pe.max()) >= rows):
            raise ValueError(f"{path}: stored learned-position indices ({name}.pe) run "
                             f"{int(pe.min())}..{int(pe.max())}, outside the table's {rows} "
                             "rows (the original's POSITION.OFFSET bug); they cannot run")


def _file_info(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """info's format and the file's own records: ours, the original NDT's or STNDT's."""
    if data.get("format") == FORMAT:
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format version {version!r} is newer than "
                             f"this nlb_ndt reads ({FORMAT_VERSION}); upgrade nlb_ndt")
        return {"format": FORMAT, "format_version": version,
                **{k: data[k] for k in (*_INFO_FIELDS, "metrics", "versions") if k in data}}
    stndt = "best_cobps" in data or is_stndt_state(data["state_dict"])
    return {"format": STNDT_FORMAT if stndt else LEGACY_FORMAT,
            "legacy": {k: _plain(data[k]) for k in _LEGACY_FIELDS if k in data}}


def _load_lfads_export(data: Mapping[str, Any], path: Path, device: torch.device
                       ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An exported lfads-torch model, and info in load_model's terms (its cfg says
    MODEL.FAMILY lfads; its hyperparameters stay in info["hparams"])."""
    try:
        model = load_lfads_export(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    cfg = get_cfg_defaults()
    cfg.MODEL.FAMILY = "lfads"
    cfg.freeze()
    info = {"format": LFADS_FORMAT, "cfg": cfg, "hparams": dict(data.get("hparams") or {}),
            "num_neurons": model.num_neurons, "trial_length": model.trial_length,
            "max_spikes": model.max_spikes, "n_heldin": model.n_heldin, "t_obs": model.t_obs}
    return model.to(device).eval(), info


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a snapshot file (ours, the original NDT's, STNDT's, or an
    exported lfads-torch model).

    Args:
        path: a `.pth` file written by `save_checkpoint`, the original AE/NDT or STNDT.
        device: where the model (and its tensors) go.

    Returns:
        (model, info): the NDT, STNDT or LFADS in eval mode on `device`, weights loaded
        strictly; and a dict with format ("nlb_ndt" | "ae" | "stndt" | "lfads-torch"), cfg
        (our defaults merged with every stored key we know; STNDT's get SPATIAL_ATTENTION
        True; an lfads-torch export's MODEL.FAMILY lfads and "hparams"), max_spikes,
        num_neurons, trial_length, plus for our files format_version, n_heldin, t_obs,
        bin_ms, dataset, epoch, trial_id, kind, metrics, versions (those stored), and for
        the others `legacy` (_LEGACY_FIELDS as plain numbers, those stored).

    Raises:
        FileNotFoundError, UnsafeCheckpointError, ValueError (see `read_checkpoint`;
        also: a newer format version, or weights that do not fit the stored config).
    """
    path, device = Path(path), torch.device(device)
    data = read_checkpoint(path, map_location=device)
    if data.get("format") == LFADS_FORMAT:
        return _load_lfads_export(data, path, device)
    info = _file_info(data, path)
    for key in ("config", "num_neurons", "trial_length", "max_spikes"):
        if key not in data:
            raise ValueError(f"{path}: checkpoint lacks '{key}'")
    cfg = _config_from(data["config"], path)
    state = data["state_dict"]
    if info["format"] == STNDT_FORMAT:  # STNDT's configs have no SPATIAL_ATTENTION key
        cfg.MODEL.FAMILY, cfg.MODEL.SPATIAL_ATTENTION = "stndt", True
        state = stndt_state_dict(state)
    cfg.freeze()
    dims = {k: _as_int(data[k], k, path)
            for k in ("num_neurons", "trial_length", "max_spikes")}
    model = build_model(cfg, **dims)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model its config describes: "
                         f"{exc}") from None
    _check_positions(model, path)
    model.to(device).eval()
    info.update(cfg=cfg, **dims)
    logger.debug("loaded %s (%s format): N=%d T=%d max_spikes=%d", path, info["format"],
                 dims["num_neurons"], dims["trial_length"], dims["max_spikes"])
    return model, info
