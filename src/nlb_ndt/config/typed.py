"""Typed, frozen views of a run's config: what the model, the data and the trainer read.

The yacs node (nlb_ndt.config.defaults) stays the file format and the place where every key
is documented with its unit; everything past loading reads these dataclasses instead,
built here and only here:

    typed_config(cfg) -> RunConfig(seed, device, ...), DataConfig, ModelConfig, TrainConfig

Counters are in epochs (see nlb_ndt.config.defaults). Options of the original that no NLB
template uses and that are not implemented are refused here, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# LFADS's typed view lives with its keys; re-exported so every typed view is importable here.
from nlb_ndt.config.lfads import LfadsConfig, lfads_config  # noqa: F401

#: The model families MODEL.FAMILY names.
MODEL_FAMILIES = ("ndt", "stndt", "lfads")

#: How a run trains: on NLB's train split (validating on val), or on train+val (a
#: test-phase refit, with nothing left to validate on).
TRAIN_SPLITS = ("train", "train+val")


@dataclass(frozen=True)
class ModelConfig:
    """What the NDT is built from (the MODEL keys; units in nlb_ndt.config.defaults)."""

    embed_dim: int = 2
    hidden_size: int = 128
    num_heads: int = 2
    num_layers: int = 6
    activation: str = "relu"
    dropout: float = 0.1
    dropout_rates: float = 0.2
    dropout_embedding: float = 0.2
    context_forward: int = 4
    context_backward: int = 8
    full_context: bool = False
    learnable_position: bool = False
    position_offset: bool = True
    pre_norm: bool = False
    fixup_init: bool = False
    fast_attention: bool = True
    loss_topk: float = 1.0
    trial_length: int = -1  # <= 0: the data's full T_obs + T_fwd


@dataclass(frozen=True)
class StndtConfig(ModelConfig):
    """What STNDT is built from: the NDT's keys, same meanings, plus two of STNDT's own.

    Tokens are always the N counts of a bin (d = N): embed_dim is 0 or 1 (both mean the
    counts themselves, as in STNDT). The defaults are our yacs defaults with
    MODEL.SPATIAL_ATTENTION True and EMBED_DIM 0.
    """

    embed_dim: int = 0
    linear_embedder: bool = False  # Linear(N, N) and Linear(T, T) input embedders
    scale_norm: bool = False  # final ScaleNorm instead of LayerNorm


@dataclass(frozen=True)
class ContrastConfig:
    """STNDT's contrastive term (the TRAIN.CONTRAST_* keys); off when weight is 0."""

    weight: float = 0.0  # lambda
    mask_ratio: float = 0.05
    temperature: float = 0.07
    on: str = "embedding"  # "embedding" (STNDT's released code) or "rates" (the paper)

    @property
    def enabled(self) -> bool:
        """Whether the term is added to the loss at all."""
        return self.weight > 0.0


@dataclass(frozen=True)
class MaskConfig:
    """BERT-style masking of held-in spikes (the TRAIN.MASK_* keys)."""

    mode: str = "timestep"
    ratio: float = 0.2
    token_ratio: float = 1.0
    random_ratio: float = 0.5
    use_zero_mask: bool = True
    max_span: int = 1
    span_ramp_start: int = 600  # epochs
    span_ramp_end: int = 1200  # epochs


@dataclass(frozen=True)
class LRConfig:
    """The learning-rate schedule (TRAIN.LR): warmup then cosine or inverse sqrt."""

    init: float = 1e-3
    schedule: bool = True
    scheduler: str = "cosine"
    warmup: int = 1000  # epochs


@dataclass(frozen=True)
class TrainConfig:
    """How one model trains (the TRAIN keys). Every count is in epochs."""

    batch_size: int = 64
    num_updates: int = 10000
    stop_at_epoch: int = 0
    max_grad_norm: float = 200.0
    weight_decay: float = 0.0
    eps: float = 1e-8
    optimizer: str = "adamw"
    patience: int = 750
    checkpoint_interval: int = 1000
    log_interval: int = 50
    val_interval: int = 10
    do_val: bool = True
    lfve_legacy: bool = False
    val_mask_seed: int = 0
    data_on_device: bool = True
    amp: bool = True
    compile: bool = False
    lr: LRConfig = LRConfig()
    mask: MaskConfig = MaskConfig()
    contrast: ContrastConfig = ContrastConfig()

    @property
    def stop_epoch(self) -> int:
        """The last epoch trained: NUM_UPDATES, or STOP_AT_EPOCH when that comes first
        (the learning-rate schedule still spans NUM_UPDATES, so a refit follows its
        original trial's learning rates up to the same epoch)."""
        return min(self.num_updates, self.stop_at_epoch or self.num_updates)


@dataclass(frozen=True)
class DataConfig:
    """Which data a run trains on (the DATA keys that are read)."""

    dataset: str = "mc_maze_small"
    bin_ms: int = 5
    train_splits: str = "train"
    random_subset_trials: float = 1.0

    @property
    def refit(self) -> bool:
        """Train+val: a test-phase refit, with no val split left to validate on."""
        return self.train_splits == "train+val"


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run executes (top-level and SYSTEM keys)."""

    seed: int = 100
    device: str = "auto"
    checkpoint_dir: str = "ckpts/"
    use_tensorboard: bool = True
    tensorboard_dir: str = "tb/"


@dataclass(frozen=True)
class TypedConfig:
    """All typed views of one config."""

    run: RunConfig
    data: DataConfig
    model: ModelConfig
    train: TrainConfig


def model_family(model_node) -> str:
    """The family of a MODEL node: "lfads", "stndt" (FAMILY stndt or SPATIAL_ATTENTION on)
    or "ndt". Configs written before MODEL.FAMILY existed are NDTs."""
    family = str(model_node.get("FAMILY", "ndt"))
    if family not in MODEL_FAMILIES:
        raise ValueError(f"MODEL.FAMILY must be one of {', '.join(MODEL_FAMILIES)}, not "
                         f"{family!r}")
    if family == "ndt" and model_node.get("SPATIAL_ATTENTION", False):
        return "stndt"
    return family


def model_config(node) -> ModelConfig:
    """The ModelConfig of a MODEL node (raises for options that are not implemented).

    LINEAR_EMBEDDER and SCALE_NORM are refused for the NDT only: STNDT builds them (its
    model reads `stndt_config`; this view still serves the keys both share).
    """
    if (node.LINEAR_EMBEDDER or node.SCALE_NORM) and model_family(node) != "stndt":
        raise NotImplementedError(
            "MODEL.LINEAR_EMBEDDER and SCALE_NORM are not supported for the NDT "
            "(no NLB template uses them; STNDT, MODEL.SPATIAL_ATTENTION, does)")
    if node.CONTEXT_WRAP_INITIAL:
        raise NotImplementedError("MODEL.CONTEXT_WRAP_INITIAL is not supported "
                                  "(no NLB template uses it)")
    if not node.LOGRATE or node.DECODER.LAYERS != 1 or node.LOSS.TYPE != "poisson":
        raise NotImplementedError("only LOGRATE, one decoder layer and Poisson loss are supported")
    if node.ACTIVATION not in ("relu", "gelu"):
        raise ValueError(f"MODEL.ACTIVATION must be relu or gelu, not {node.ACTIVATION!r}")
    return ModelConfig(
        embed_dim=int(node.EMBED_DIM), hidden_size=int(node.HIDDEN_SIZE),
        num_heads=int(node.NUM_HEADS), num_layers=int(node.NUM_LAYERS),
        activation=str(node.ACTIVATION), dropout=float(node.DROPOUT),
        dropout_rates=float(node.DROPOUT_RATES), dropout_embedding=float(node.DROPOUT_EMBEDDING),
        context_forward=int(node.CONTEXT_FORWARD), context_backward=int(node.CONTEXT_BACKWARD),
        full_context=bool(node.FULL_CONTEXT), learnable_position=bool(node.LEARNABLE_POSITION),
        position_offset=bool(node.POSITION.OFFSET), pre_norm=bool(node.PRE_NORM),
        fixup_init=bool(node.FIXUP_INIT), fast_attention=bool(node.FAST_ATTENTION),
        loss_topk=float(node.LOSS.TOPK), trial_length=int(node.TRIAL_LENGTH))


def stndt_config(node) -> StndtConfig:
    """The StndtConfig of a MODEL node (raises for options STNDT does not build)."""
    if not node.LINEAR_EMBEDDER and int(node.EMBED_DIM) not in (0, 1):
        raise NotImplementedError(
            f"MODEL.EMBED_DIM={node.EMBED_DIM}: STNDT's tokens are the counts themselves "
            "(d = N), so only 0 or 1 build; set EMBED_DIM 0 (or LINEAR_EMBEDDER True)")
    shared = {f.name: getattr(model_config(node), f.name) for f in fields(ModelConfig)}
    shared["embed_dim"] = 0 if node.LINEAR_EMBEDDER else int(node.EMBED_DIM)
    return StndtConfig(**shared, linear_embedder=bool(node.LINEAR_EMBEDDER),
                       scale_norm=bool(node.SCALE_NORM))


def contrast_config(node) -> ContrastConfig:
    """The ContrastConfig of a TRAIN node."""
    if node.CONTRAST_ON not in ("embedding", "rates"):
        raise ValueError(f"TRAIN.CONTRAST_ON must be embedding or rates, not "
                         f"{node.CONTRAST_ON!r}")
    if float(node.CONTRAST_LAMBDA) < 0 or not 0.0 <= float(node.CONTRAST_MASK_RATIO) <= 1.0:
        raise ValueError("TRAIN.CONTRAST_LAMBDA must be >= 0 and TRAIN.CONTRAST_MASK_RATIO "
                         "within [0, 1]")
    if float(node.CONTRAST_TEMPERATURE) <= 0:
        raise ValueError(f"TRAIN.CONTRAST_TEMPERATURE must be > 0, not "
                         f"{node.CONTRAST_TEMPERATURE}")
    return ContrastConfig(weight=float(node.CONTRAST_LAMBDA),
                          mask_ratio=float(node.CONTRAST_MASK_RATIO),
                          temperature=float(node.CONTRAST_TEMPERATURE),
                          on=str(node.CONTRAST_ON))


def mask_config(node) -> MaskConfig:
    """The MaskConfig of a TRAIN node."""
    if node.MASK_MODE != "timestep":
        raise NotImplementedError(f"TRAIN.MASK_MODE {node.MASK_MODE!r}: only 'timestep'")
    return MaskConfig(
        mode=str(node.MASK_MODE), ratio=float(node.MASK_RATIO),
        token_ratio=float(node.MASK_TOKEN_RATIO), random_ratio=float(node.MASK_RANDOM_RATIO),
        use_zero_mask=bool(node.USE_ZERO_MASK), max_span=int(node.MASK_MAX_SPAN),
        span_ramp_start=int(node.MASK_SPAN_RAMP_START),
        span_ramp_end=int(node.MASK_SPAN_RAMP_END))


def lr_config(node) -> LRConfig:
    """The LRConfig of a TRAIN.LR node."""
    if node.SCHEDULER not in ("cosine", "invsqrt"):
        raise ValueError(f"TRAIN.LR.SCHEDULER must be cosine or invsqrt, not "
                         f"{node.SCHEDULER!r}")
    return LRConfig(init=float(node.INIT), schedule=bool(node.SCHEDULE),
                    scheduler=str(node.SCHEDULER), warmup=int(node.WARMUP))


def train_config(node) -> TrainConfig:
    """The TrainConfig of a TRAIN node."""
    for key in ("VAL_INTERVAL", "CHECKPOINT_INTERVAL", "LOG_INTERVAL", "BATCH_SIZE"):
        if int(node[key]) < 1:
            raise ValueError(f"TRAIN.{key} must be >= 1, not {node[key]}")
    return TrainConfig(
        batch_size=int(node.BATCH_SIZE), num_updates=int(node.NUM_UPDATES),
        stop_at_epoch=int(node.STOP_AT_EPOCH), max_grad_norm=float(node.MAX_GRAD_NORM),
        weight_decay=float(node.WEIGHT_DECAY), eps=float(node.EPS),
        optimizer=str(node.OPTIMIZER), patience=int(node.PATIENCE),
        checkpoint_interval=int(node.CHECKPOINT_INTERVAL), log_interval=int(node.LOG_INTERVAL),
        val_interval=int(node.VAL_INTERVAL), do_val=bool(node.DO_VAL),
        lfve_legacy=bool(node.LFVE_LEGACY), val_mask_seed=int(node.VAL_MASK_SEED),
        data_on_device=bool(node.DATA_ON_DEVICE), amp=bool(node.AMP),
        compile=bool(node.COMPILE), lr=lr_config(node.LR), mask=mask_config(node),
        contrast=contrast_config(node))


def data_config(node) -> DataConfig:
    """The DataConfig of a DATA node."""
    if node.TRAIN_SPLITS not in TRAIN_SPLITS:
        raise ValueError(f"DATA.TRAIN_SPLITS must be 'train' or 'train+val', not "
                         f"{node.TRAIN_SPLITS!r}")
    return DataConfig(dataset=str(node.DATASET), bin_ms=int(node.BIN_MS),
                      train_splits=str(node.TRAIN_SPLITS),
                      random_subset_trials=float(node.RANDOM_SUBSET_TRIALS))


def run_config(cfg) -> RunConfig:
    """The RunConfig of a whole config."""
    return RunConfig(seed=int(cfg.SEED), device=str(cfg.SYSTEM.DEVICE),
                     checkpoint_dir=str(cfg.CHECKPOINT_DIR),
                     use_tensorboard=bool(cfg.USE_TENSORBOARD),
                     tensorboard_dir=str(cfg.TENSORBOARD_DIR))


def typed_config(cfg) -> TypedConfig:
    """Every typed view of a whole config (a yacs CfgNode of nlb_ndt.config.defaults)."""
    return TypedConfig(run=run_config(cfg), data=data_config(cfg.DATA),
                       model=model_config(cfg.MODEL), train=train_config(cfg.TRAIN))
