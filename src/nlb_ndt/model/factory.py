"""Build the model a config names: MODEL.FAMILY (and MODEL.SPATIAL_ATTENTION) choose the
family, each built from its own frozen config."""

from __future__ import annotations

from torch import nn

from nlb_ndt.config.lfads import lfads_config
from nlb_ndt.config.typed import model_config, model_family, stndt_config
from nlb_ndt.datasets import get_spec
from nlb_ndt.model.lfads import LFADS
from nlb_ndt.model.ndt import NDT
from nlb_ndt.model.stndt import STNDT


def build_model(cfg, *, num_neurons: int, trial_length: int, max_spikes: int) -> nn.Module:
    """The model of a whole config, untrained.

    Args:
        cfg: a config (reads cfg.MODEL).
        num_neurons: N = N_in + N_out.
        trial_length: T = T_obs + T_fwd (bins).
        max_spikes: the largest count the model expects (inputs are clamped to it).
    """
    family = model_family(cfg.MODEL)
    if family == "ndt":
        return NDT(model_config(cfg.MODEL), num_neurons=num_neurons,
                   trial_length=trial_length, max_spikes=max_spikes)
    if family == "stndt":
        return STNDT(stndt_config(cfg.MODEL), num_neurons=num_neurons,
                     trial_length=trial_length, max_spikes=max_spikes)
    if family == "lfads":
        return _build_lfads(cfg, num_neurons=num_neurons, trial_length=trial_length)
    raise NotImplementedError(f"MODEL.FAMILY {family!r} is not available yet")


def _build_lfads(cfg, *, num_neurons: int, trial_length: int) -> LFADS:
    """LFADS from cfg.LFADS. Its input size I and observed bins T are LFADS.ENCOD_DATA_DIM /
    ENCOD_SEQ_LEN, or where those are 0 the held-in neurons and observed bins of
    DATA.DATASET at DATA.BIN_MS. It reads raw counts: max_spikes is not used."""
    lfads = lfads_config(cfg.LFADS)
    n_heldin, t_obs = lfads.encod_data_dim, lfads.encod_seq_len
    if not (n_heldin and t_obs):
        spec = get_spec(cfg.DATA.DATASET)
        n_heldin = n_heldin or spec.n_heldin
        t_obs = t_obs or spec.bins(int(cfg.DATA.BIN_MS))[0]
    return LFADS(lfads, n_heldin=n_heldin, t_obs=t_obs, num_neurons=num_neurons,
                 trial_length=trial_length)
