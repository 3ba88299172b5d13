"""Constants and helpers shared by several test modules (importable: tests/ is on sys.path)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from nlb_ndt.config.layout import SNAPSHOT_KINDS
from nlb_ndt.config.render import TEMPLATE_DIR as RENDER_TEMPLATE_DIR
from nlb_ndt.datasets import get_spec

# Tests clear every path variable before pointing NLB_HOME at a temporary folder, so a
# user's real NLB_HOME is never touched.
from nlb_ndt.paths import PATH_VARIABLES as PATH_VARS  # noqa: F401 (re-exported)
from nlb_ndt.scoring.evalai_file import group_shapes
from nlb_ndt.testing import save_original_layout  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = RENDER_TEMPLATE_DIR

#: The synthetic dataset has mc_maze_small's shape (conftest's `synthetic_home`).
DATASET = "mc_maze_small"
SPEC = get_spec(DATASET)
#: The run name of the synthetic template, which trains at 20 ms.
NAME = "synthetic"
TEMPLATE = TEMPLATE_DIR / f"{NAME}.yaml"
BIN_MS = 20
GROUP = SPEC.group(BIN_MS)  # "mc_maze_small_20"
#: Command-line opts that shrink the synthetic template's model to one small layer.
TINY_MODEL_OPTS = ["MODEL.NUM_LAYERS", 1, "MODEL.HIDDEN_SIZE", 16]
#: Trial counts of the small hand-made submissions and targets below.
N_TRAIN, N_EVAL = 12, 6


def load_script(name: str):
    """Import a top-level script (e.g. "make_submission") as a module, to call its main()."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would be: dataclasses look their module up there.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def isolated_download_env(monkeypatch, home) -> None:
    """Path variables cleared and NLB_HOME at `home`; fast retries; no proxy for 127.0.0.1
    (the fake DANDI/Zenodo server)."""
    for var in PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NLB_HOME", str(home))
    monkeypatch.setenv("NLB_DOWNLOAD_BACKOFF_S", "0.01")
    monkeypatch.setenv("NLB_DOWNLOAD_RETRIES", "4")
    monkeypatch.setenv("NLB_DOWNLOAD_TIMEOUT_S", "10")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# --- Hand-made submissions and targets -----------------------------------------------


def make_rates(dataset: str, seed: int = 0, bin_ms: int = 5) -> dict[str, np.ndarray]:
    """Six valid float64 rate arrays shaped for `dataset` (N_TRAIN / N_EVAL trials)."""
    rng = np.random.default_rng(seed)
    shapes = group_shapes(dataset, bin_ms=bin_ms, n_train=N_TRAIN, n_eval=N_EVAL)
    return {k: rng.uniform(0.05, 1.0, shape) for k, shape in shapes.items()}


def make_target(dataset: str, seed: int = 1) -> dict[str, np.ndarray]:
    """A minimal 5 ms ground-truth group in make_eval_target_tensors' layout (no PSTH)."""
    rng = np.random.default_rng(seed)
    spec = get_spec(dataset)
    t_obs, t_fwd = spec.bins(5)

    def counts(n: int, t: int, k: int) -> np.ndarray:
        return rng.poisson(0.5, (n, t, k)).astype("f4")

    return {
        "eval_spikes_heldout": counts(N_EVAL, t_obs, spec.n_heldout),
        "eval_spikes_heldin_forward": counts(N_EVAL, t_fwd, spec.n_heldin),
        "eval_spikes_heldout_forward": counts(N_EVAL, t_fwd, spec.n_heldout),
        "train_behavior": rng.standard_normal((N_TRAIN, t_obs, 2)).astype("f4"),
        "eval_behavior": rng.standard_normal((N_EVAL, t_obs, 2)).astype("f4"),
    }


# --- A fake search in run_hyperopt.py's layout ---------------------------------------


def snapshot_model(cfg, *, mean_rates: np.ndarray, noise: float, seed: int, max_spikes: int,
                   trial_length: int):
    """An untrained NDT whose decoder bias holds log(mean rate) and whose random decoder
    weights add log-rate noise of standard deviation ~`noise`: a model of known quality."""
    import torch

    from nlb_ndt.model.factory import build_model

    torch.manual_seed(seed)
    model = build_model(cfg, num_neurons=mean_rates.size, trial_length=trial_length,
                        max_spikes=max_spikes)
    with torch.no_grad():
        # The decoder reads a unit-variance LayerNorm output, so log-rates get noise of
        # standard deviation ~`noise` around log(mean rate) - noise^2 / 2 (an unbiased rate).
        weight = model.decoder[0].weight
        weight.uniform_(-1.0, 1.0).mul_(noise * np.sqrt(3.0 / weight.shape[1]))
        model.decoder[0].bias.copy_(torch.from_numpy(np.log(mean_rates) - noise**2 / 2))
    return model.eval()


def fill_search(paths, tensors, *, experiment: str = f"{NAME}-s0", first_trial: int = 0,
                info: dict | None = None) -> list[dict]:
    """Two trials x three snapshots of run NAME in the run_hyperopt layout
    (RAY_TUNE_HOME/<NAME>/<experiment>/<trial_dir>/ with config.yaml, metrics.csv,
    params.json and ckpts/<trial_id>.<kind>.pth); returns what was written.

    The defaults make the shared fake search (conftest's `search_home`). Another
    `experiment` of the same run takes trials `first_trial`, `first_trial + 1` (other
    ids, seeds and noise levels) and, with `info`, an experiment_info.json holding it
    (e.g. {"profile": "aesmte3", "snapshots": ["lve", "lfve"]}).
    """
    from nlb_ndt.config.defaults import apply_overrides, load_config
    from nlb_ndt.model.checkpoint import save_checkpoint

    base = load_config(TEMPLATE, TINY_MODEL_OPTS)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    (paths.config_dir / f"{NAME}.yaml").write_text(base.dump())
    spikes = np.concatenate([tensors["train_spikes_heldin"], tensors["train_spikes_heldout"]],
                            axis=2)
    mean_rates = np.nanmean(spikes, axis=(0, 1)).clip(1e-3)
    n_in, t_obs = tensors["train_spikes_heldin"].shape[2], tensors["train_spikes_heldin"].shape[1]
    trial_length = t_obs + tensors["train_spikes_heldin_forward"].shape[1]
    written = []
    if info is not None:
        exp_dir = paths.ray_tune_home / NAME / experiment
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / "experiment_info.json").write_text(json.dumps(info))
    for i in range(first_trial, first_trial + 2):
        trial_id = f"{0xabc00 + i:08x}"
        params = {"TRAIN.LR.INIT": 1e-3 * (i + 1), "MODEL.DROPOUT": 0.05 * i}
        cfg = apply_overrides(base, {**params, "SEED": 100 + i})
        trial_dir = paths.ray_tune_home / NAME / experiment / f"run_trial_{trial_id}_{i:05d}"
        (trial_dir / "ckpts").mkdir(parents=True)
        (trial_dir / "config.yaml").write_text(cfg.dump())
        (trial_dir / "params.json").write_text(json.dumps(params))
        with open(trial_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "best_masked_loss", "best_val_cobps", "done"])
            for epoch in (10, 20):
                writer.writerow([epoch, 0.5 - 0.01 * i - 0.001 * epoch, 0.01 * i, epoch == 20])
        for k, kind in enumerate(SNAPSHOT_KINDS):
            noise = 0.10 + 0.04 * (3 * i + k)  # 0.10 .. 0.30: distinct qualities
            model = snapshot_model(cfg, mean_rates=mean_rates, noise=noise, seed=10 * i + k,
                                   max_spikes=int(np.nanmax(spikes)) + 3,
                                   trial_length=trial_length)
            path = trial_dir / "ckpts" / f"{trial_id}.{kind}.pth"
            save_checkpoint(path, model, cfg, n_heldin=n_in, t_obs=t_obs, epoch=10 * (k + 1),
                            trial_id=trial_id, kind=kind)
            written.append({"path": path, "trial_id": trial_id, "kind": kind, "noise": noise})
    return written


#: The second experiment of conftest's `experiments_home`: AESMTE3's profile, which ranks
#: lve and lfve snapshots only, beside the shared search's `<NAME>-s0` (no record: all kinds).
AESMTE3_EXPERIMENT = f"{NAME}-s0-aesmte3"
AESMTE3_INFO = {"profile": "aesmte3", "objective": "best_masked_loss",
                "snapshots": ["lve", "lfve"]}


def copy_search(search: dict, home: Path, monkeypatch):
    """The fake search of `search` (its experiments and configs, not its rankings) copied
    into a fresh NLB_HOME `home` reading the same data, the path variables pointing there
    (through `monkeypatch`, a pytest.MonkeyPatch). Returns the new Paths, so a test may
    change the copy's files."""
    import shutil

    from nlb_ndt.paths import get_paths

    src = search["paths"]
    shutil.copytree(src.ray_tune_home, home / "ray_results" / "neural-data-transformer")
    shutil.copytree(src.config_dir, home / "configs")
    for var in PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in {**search["env"], "NLB_HOME": str(home)}.items():
        monkeypatch.setenv(var, value)
    return get_paths()


def make_zip(members: dict[str, bytes]) -> bytes:
    """A deflated zip archive of {member name: bytes}, in memory."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def run_smoke_search(paths, temp_dir, **kwargs):
    """The synthetic smoke search (2 CPUs, one per trial, quiet), with `kwargs` on top."""
    from nlb_ndt import hyperopt  # Ray: only the search tests pay for it

    args = dict(seed=0, smoke_test=True, cpus_per_trial=1, num_cpus=2, paths=paths,
                ray_temp_dir=temp_dir, verbose=0)
    args.update(kwargs)
    return hyperopt.run_search("synthetic", **args)
