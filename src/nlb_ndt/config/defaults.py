"""Every option of a run, with its unit: the original's yacs keys plus a few new ones.

Units: the original counts "updates" as passes over the training set, so NUM_UPDATES,
LR.WARMUP, PATIENCE, VAL_INTERVAL, LOG_INTERVAL, CHECKPOINT_INTERVAL and the
MASK_SPAN_RAMP_* keys are all in **epochs**. Times are in bins of DATA.BIN_MS ms.

Merge order: defaults <- template YAML <- generated paths <- command-line opts, then freeze.
yacs only merges values of the same type, so numbers given on the command line or by a
search must already be native `int` / `float`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, MutableMapping, Sequence

from yacs.config import CfgNode as CN

from nlb_ndt.config.lfads import lfads_defaults
from nlb_ndt.datasets import get_spec

log = logging.getLogger(__name__)

_C = CN()
_C.SEED = 100  # base random seed (python, numpy, torch); a search derives one per trial
_C.USE_TENSORBOARD = True  # TensorBoard curves in TENSORBOARD_DIR (metrics.csv is always kept)
_C.TENSORBOARD_DIR = "tb/"  # TensorBoard folder (relative to the run folder)
_C.CHECKPOINT_DIR = "ckpts/"  # snapshot folder (relative to the run folder unless absolute)
_C.LOG_DIR = "logs/"  # log folder (relative to the run folder)

_C.SYSTEM = CN()
_C.SYSTEM.TORCH_GPU_ID = 0  # CUDA device index when SYSTEM.DEVICE is "auto" or "cuda"
_C.SYSTEM.GPU_AUTO_ASSIGN = False  # original: pick the least-used GPU (unused: Ray assigns GPUs)
_C.SYSTEM.NUM_GPUS = 1  # original: DataParallel over several GPUs (unused: one model per trial)
_C.SYSTEM.DEVICE = "auto"  # "auto" (CUDA if visible, else CPU), "cpu" or "cuda"

_C.DATA = CN()
_C.DATA.DATASET = "mc_maze_small"  # NLB dataset name (see nlb_ndt.datasets)
_C.DATA.BIN_MS = 5  # bin width in ms: 5 (AESMTE3's track) or 20
_C.DATA.DATAPATH = "data/"  # folder of the cached NDT h5 files (filled by generate_all_configs)
_C.DATA.TRAIN_FILENAME = "train.h5"  # cached training file name, e.g. "mc_maze_train.h5"
_C.DATA.VAL_FILENAME = "train.h5"  # always the same file as TRAIN_FILENAME (val split inside)
_C.DATA.TEST_FILENAME = "test.h5"  # cached test-phase file name
_C.DATA.OVERFIT_TEST = False  # original debugging switch (unused)
_C.DATA.RANDOM_SUBSET_TRIALS = 1.0  # fraction of training trials to use (1.0 = all)
_C.DATA.TRAIN_SPLITS = "train"  # "train", or "train+val" (a test-phase refit: no validation)
_C.DATA.LOG_EPSILON = 1e-7  # original: log offset for ground-truth rates (unused for NLB)

_C.MODEL = CN()
_C.MODEL.FAMILY = "ndt"  # "ndt", "stndt" (the NDT with attention over neurons) or "lfads"
_C.MODEL.SPATIAL_ATTENTION = False  # STNDT's attention over neurons in every layer (family stndt)
_C.MODEL.TRIAL_LENGTH = -1  # bins per trial fed to the model; <= 0 means the full T_obs + T_fwd
_C.MODEL.CONTEXT_FORWARD = 4  # bins a query may attend ahead (< 0: unlimited)
_C.MODEL.CONTEXT_BACKWARD = 8  # bins a query may attend behind (<= 0: unlimited)
_C.MODEL.CONTEXT_WRAP_INITIAL = False  # let the first CONTEXT_BACKWARD bins see each other
_C.MODEL.FULL_CONTEXT = False  # no attention band at all
_C.MODEL.UNMASKED_LOSS_SCALE = 0.0  # deprecated in the original (unused)
_C.MODEL.HIDDEN_SIZE = 128  # feed-forward width of each encoder layer
_C.MODEL.DROPOUT = 0.1  # attention-probability and residual dropout
_C.MODEL.DROPOUT_RATES = 0.2  # dropout before the rate decoder
_C.MODEL.DROPOUT_EMBEDDING = 0.2  # dropout after adding positions
_C.MODEL.NUM_HEADS = 2  # attention heads (d_model must divide by it)
_C.MODEL.NUM_LAYERS = 6  # encoder layers
_C.MODEL.ACTIVATION = "relu"  # feed-forward activation ("relu" or "gelu")
_C.MODEL.LINEAR_EMBEDDER = False  # STNDT only: Linear(N, N) / Linear(T, T) input embedders
_C.MODEL.EMBED_DIM = 2  # 0: identity input (d_model = N); k > 0: per-count embedding, d = k*N
_C.MODEL.LEARNABLE_POSITION = False  # learned position table (True in every NLB template)
_C.MODEL.MAX_SPIKE_COUNT = 20  # original: classes of the "cel" loss (unused)
_C.MODEL.REQUIRES_RATES = False  # original: synthetic ground truth (unused)
_C.MODEL.LOGRATE = True  # the decoder outputs log-rates per bin (only True is supported)
_C.MODEL.SPIKE_LOG_INIT = False  # original option (unused)
_C.MODEL.FIXUP_INIT = False  # T-Fixup scaling of linear1, linear2, out_proj at construction
_C.MODEL.PRE_NORM = False  # LayerNorm before attention / feed-forward (True in NLB templates)
_C.MODEL.SCALE_NORM = False  # STNDT only: final ScaleNorm (one learned gain) for the LayerNorm
_C.MODEL.FAST_ATTENTION = True  # fused scaled_dot_product_attention (False: the plain path)
_C.MODEL.DECODER = CN()
_C.MODEL.DECODER.LAYERS = 1  # linear decoder layers (only 1 is supported)
_C.MODEL.LOSS = CN()
_C.MODEL.LOSS.TYPE = "poisson"  # Poisson NLL on log-rates
_C.MODEL.LOSS.TOPK = 1.0  # fraction of loss terms kept (1.0 = all)
_C.MODEL.POSITION = CN()
_C.MODEL.POSITION.OFFSET = True  # sinusoidal positions start at 1; learned ones always at 0

_C.TRAIN = CN()
_C.TRAIN.DO_VAL = True  # validate every VAL_INTERVAL epochs
_C.TRAIN.DO_R2 = True  # original: R2 against ground-truth rates (unused for NLB)
_C.TRAIN.BATCH_SIZE = 64  # trials per batch
_C.TRAIN.NUM_UPDATES = 10000  # training length in epochs; the cosine reaches 0 here, training stops
_C.TRAIN.MAX_GRAD_NORM = 200.0  # gradient-norm clip
_C.TRAIN.USE_ZERO_MASK = True  # mask token is 0 (else max_spikes + 1)
_C.TRAIN.MASK_RATIO = 0.2  # fraction of observed bins masked
_C.TRAIN.MASK_TOKEN_RATIO = 1.0  # of masked entries, fraction replaced by the mask token
_C.TRAIN.MASK_RANDOM_RATIO = 0.5  # of the rest, fraction replaced by a random count
_C.TRAIN.MASK_MODE = "timestep"  # masking unit (only "timestep" is supported)
_C.TRAIN.MASK_MAX_SPAN = 1  # widest masked span in bins
_C.TRAIN.MASK_SPAN_RAMP_START = 600  # epoch where spans start to be used
_C.TRAIN.MASK_SPAN_RAMP_END = 1200  # epoch from which spans are always used
_C.TRAIN.LR = CN()
_C.TRAIN.LR.INIT = 1e-3  # peak learning rate
_C.TRAIN.LR.SCHEDULE = True  # use LR.SCHEDULER (False: constant LR.INIT)
_C.TRAIN.LR.SCHEDULER = "cosine"  # linear warmup then half-cosine to 0 at NUM_UPDATES
_C.TRAIN.LR.WARMUP = 1000  # warmup length in epochs
_C.TRAIN.WEIGHT_DECAY = 0.0  # AdamW decoupled weight decay (on every parameter, as the original)
_C.TRAIN.EPS = 1e-8  # AdamW epsilon
_C.TRAIN.OPTIMIZER = "adamw"  # "adamw" (torch's) or "adamw_legacy" (the original's arithmetic)
_C.TRAIN.STOP_AT_EPOCH = 0  # stop after this epoch (0: NUM_UPDATES); the schedule keeps NUM_UPDATES
_C.TRAIN.PATIENCE = 750  # stop when the best masked val loss is this many epochs old
_C.TRAIN.CHECKPOINT_INTERVAL = 1000  # epochs between resumable state saves
_C.TRAIN.LOG_INTERVAL = 50  # epochs between progress log lines
_C.TRAIN.VAL_INTERVAL = 10  # epochs between validations
_C.TRAIN.TUNE_EPOCHS_PER_GENERATION = 500  # original: epochs per Tune step (unused: see INERT_KEYS)
_C.TRAIN.TUNE_HP_JSON = "./search_space.json"  # search-space JSON (filled by generate_all_configs)
_C.TRAIN.TUNE_WARMUP = 0  # original (unused)
_C.TRAIN.TUNE_METRIC = "smth_masked_loss"  # original (unused; see run_hyperopt --objective)
_C.TRAIN.LFVE_LEGACY = False  # True: the original's buggy unmasked loss for the lfve snapshot
_C.TRAIN.VAL_MASK_SEED = 0  # seed of the fixed validation mask (the original redrew it)
_C.TRAIN.DATA_ON_DEVICE = True  # keep the whole dataset on the device (no per-batch copies)
_C.TRAIN.AMP = True  # bf16 autocast in training where bf16 is native (CUDA; AVX512-BF16/AMX CPUs)
_C.TRAIN.COMPILE = False  # torch.compile the model (CUDA only)
_C.TRAIN.CONTRAST_LAMBDA = 0.0  # weight of STNDT's contrastive loss (unitless; 0.0 = off)
_C.TRAIN.CONTRAST_MASK_RATIO = 0.05  # fraction of observed bins altered in each contrast view
_C.TRAIN.CONTRAST_TEMPERATURE = 0.07  # NT-Xent temperature (divides cosine similarities)
_C.TRAIN.CONTRAST_ON = "embedding"  # "embedding" (STNDT's code) or "rates" (STNDT's paper)

# LFADS (MODEL.FAMILY "lfads"), as lfads-torch: one key per field of
# nlb_ndt.config.lfads.LfadsConfig, upper-cased (LFADS.IC_ENC_DIM, ...), whose comments give
# each key's meaning and unit (kept there: this module stays under its size limit).
_C.LFADS = CN(lfads_defaults())


# --- Inert keys ---------------------------------------------------------------------
# The original's configs carry these keys, so they stay loadable (templates, checkpoints),
# but nothing here reads them. A run that sets one away from its default is told so.
INERT_KEYS: dict[str, str] = {
    "DATA.DATAPATH": "tensors are read from NDT_CACHE_DIR",
    "DATA.TRAIN_FILENAME": "cache files are named after the dataset and bin size",
    "DATA.VAL_FILENAME": "the val split is inside the training cache file",
    "DATA.TEST_FILENAME": "cache files are named after the dataset and bin size",
    "DATA.OVERFIT_TEST": "a debugging switch of the original",
    "DATA.LOG_EPSILON": "NLB has no ground-truth rates to take logs of",
    "SYSTEM.NUM_GPUS": "one model per trial; use run_hyperopt.py --gpus-per-trial",
    "SYSTEM.GPU_AUTO_ASSIGN": "Ray assigns GPUs to trials; use SYSTEM.DEVICE for one run",
    "MODEL.UNMASKED_LOSS_SCALE": "deprecated in the original",
    "MODEL.MAX_SPIKE_COUNT": "only the Poisson loss is supported",
    "MODEL.REQUIRES_RATES": "NLB has no ground-truth rates",
    "MODEL.SPIKE_LOG_INIT": "not supported",
    "TRAIN.DO_R2": "NLB has no ground-truth rates; co-bps is computed instead",
    "TRAIN.TUNE_EPOCHS_PER_GENERATION": "trials report after every validation",
    "TRAIN.TUNE_WARMUP": "not used by the Bayesian search",
    "TRAIN.TUNE_METRIC": "use run_hyperopt.py --objective",
    "LOG_DIR": "each run logs to trial.log / train.log in its own folder",
}

#: Keys that older configs and the original's checkpoints carry but that nothing ever read;
#: they were removed from the defaults. Loading such a file drops them, with one warning
#: per key and process.
REMOVED_KEYS: dict[str, str] = {
    "VARIANT": "run names come from the config file or --out",
    "MODEL.NAME": "the model is chosen by its MODEL options",
    "TRAIN.TUNE_MODE": "a trial knows it runs under Ray Tune",
}
_warned_removed: set[str] = set()

#: Keys the original did not have; its checkpoints and configs get these defaults.
ADDED_KEYS = ("SYSTEM.DEVICE", "DATA.DATASET", "DATA.BIN_MS", "DATA.TRAIN_SPLITS",
              "MODEL.FAST_ATTENTION", "TRAIN.LFVE_LEGACY", "TRAIN.VAL_MASK_SEED",
              "TRAIN.DATA_ON_DEVICE", "TRAIN.AMP", "TRAIN.COMPILE", "TRAIN.OPTIMIZER",
              "TRAIN.STOP_AT_EPOCH", "MODEL.FAMILY", "MODEL.SPATIAL_ATTENTION",
              "TRAIN.CONTRAST_LAMBDA", "TRAIN.CONTRAST_MASK_RATIO", "TRAIN.CONTRAST_TEMPERATURE",
              "TRAIN.CONTRAST_ON")


def get_cfg_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def drop_removed_keys(node: MutableMapping[str, Any], *, source: str = "a config") -> None:
    """Remove REMOVED_KEYS from a loaded config mapping in place (one warning per key)."""
    for key in REMOVED_KEYS:
        *parents, leaf = key.split(".")
        parent: Any = node
        for part in parents:
            parent = parent.get(part) if isinstance(parent, Mapping) else None
        if isinstance(parent, MutableMapping) and leaf in parent:
            del parent[leaf]
            warn_removed_key(key, source=source)


def warn_removed_key(key: str, *, source: str) -> None:
    """The one warning (per key and process) that a file sets one of REMOVED_KEYS."""
    if key not in _warned_removed:
        _warned_removed.add(key)
        log.warning("%s sets %s, which is no longer a setting (%s); ignored", source, key,
                    REMOVED_KEYS[key])


def check_opts(opts: Sequence[Any]) -> list:
    """Command-line overrides as a list, checked to be KEY VALUE pairs."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(f"--opts takes KEY VALUE pairs, got {len(opts)} items: {opts}")
    return opts


def _merge_text(cfg: CN, text: str, source: str) -> None:
    other = CN.load_cfg(text)
    drop_removed_keys(other, source=source)
    cfg.merge_from_other_cfg(other)


def load_config(files: str | Path | Iterable[str | Path] = (),
                opts: Sequence[Any] | None = None, *, freeze: bool = True) -> CN:
    """Defaults merged with each YAML file in order, then `opts` (["KEY", "VALUE", ...]).

    Unknown keys raise a KeyError that names the key and the file (REMOVED_KEYS are
    dropped with a warning instead).
    """
    cfg = get_cfg_defaults()
    if isinstance(files, (str, Path)):
        files = [files]
    for f in files:
        try:
            _merge_text(cfg, Path(f).read_text(), str(f))
        except KeyError as exc:
            raise KeyError(f"{f}: {exc.args[0] if exc.args else exc}") from None
    if opts:
        cfg.merge_from_list(check_opts(opts))
    if freeze:
        cfg.freeze()
    return cfg


def load_config_text(text: str, *, source: str = "a stored config") -> CN:
    """Defaults merged with a YAML string (as stored in our checkpoints and experiments)."""
    cfg = get_cfg_defaults()
    _merge_text(cfg, text, source)
    return cfg


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"TRAIN": {"LR": {"INIT": 1e-3}}} -> {"TRAIN.LR.INIT": 1e-3}."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def coerce_to_default(value: Any, default: Any, *, key: str = "value") -> Any:
    """`value` as the type of the key's `default`, the one rule for every merge.

    yacs merges only values of the default's type. Search points, command-line values and
    old checkpoints arrive as numpy scalars, 0-d tensors or ints for float keys, so they
    are converted here: an int (or a whole float, 3.0) fits an int key, any real number a
    float key, a bool only a bool key; lists fit lists and tuples. Anything else raises a
    TypeError naming the key.
    """
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy scalar or 0-d tensor
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = number and float(value).is_integer()
        value = int(value) if ok else value
    elif isinstance(default, float):
        ok = number
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = type(default)(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise TypeError(f"{key}={value!r} does not fit the type of its default "
                        f"{default!r} ({type(default).__name__})")
    return value


def apply_overrides(cfg: CN, overrides: Mapping[str, Any]) -> CN:
    """A copy of `cfg` with dotted-key overrides (e.g. sampled hyperparameters) merged in.

    Values go through `coerce_to_default`; unknown keys raise KeyError, values of the wrong
    type TypeError.
    """
    out = cfg.clone()
    out.defrost()
    for name, value in overrides.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], CN):
                raise KeyError(f"unknown config key {name!r}")
            node = node[p]
        if leaf not in node or isinstance(node[leaf], CN):
            raise KeyError(f"unknown config key {name!r}")
        node[leaf] = coerce_to_default(value, node[leaf], key=name)
    return out


def config_value(cfg: Mapping[str, Any], key: str) -> Any:
    """The value at dotted `key` ("TRAIN.LR.INIT"); KeyError when there is none."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"unknown config key {key!r}")
        node = node[part]
    return node


def inert_settings(cfg: CN, *, ndt_cache_dir: Path | None = None) -> list[str]:
    """One message per inert key that `cfg` sets away from its default.

    These keys are read from the original's configs but change nothing here (see INERT_KEYS
    for what to use instead). DATA.DATAPATH counts only when it differs from the tensor
    cache in use, and the file names only when they are not the dataset's own names,
    since generate_all_configs.py writes those.
    """
    defaults = get_cfg_defaults()
    messages = []
    for key, instead in INERT_KEYS.items():
        value, default = config_value(cfg, key), config_value(defaults, key)
        if value == default:
            continue
        if key == "DATA.DATAPATH" and ndt_cache_dir is not None and \
                Path(str(value)).expanduser().resolve() == Path(ndt_cache_dir).resolve():
            continue
        if key.endswith("_FILENAME"):
            group = get_spec(cfg.DATA.DATASET).group(cfg.DATA.BIN_MS)
            phase = "test" if key == "DATA.TEST_FILENAME" else "train"
            if value == f"{group}_{phase}.h5":
                continue
        messages.append(f"{key}={value!r} has no effect here: {instead}")
    return messages


def warn_inert_settings(cfg: CN, *, ndt_cache_dir: Path | None = None) -> list[str]:
    """Log `inert_settings` as warnings (once per key); returns the messages."""
    messages = inert_settings(cfg, ndt_cache_dir=ndt_cache_dir)
    for message in messages:
        log.warning("%s", message)
    return messages
