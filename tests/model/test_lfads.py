"""LFADS against a plain float64 numpy rewrite of lfads-torch's equations (written here from
the facts sheet, step by step), its parameter names, init, the lfads-torch export loader
and the factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.lfads import LfadsConfig
from nlb_ndt.datasets import get_spec
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.lfads import EXPORT_FORMAT, LFADS, NO_SPIKE_CLAMP, load_lfads_export

# Sizes that share no factors, so a transposed or mis-sliced weight cannot go unnoticed.
N_IN, NT, T, TR = 5, 7, 11, 13
DIMS = dict(ic_enc_dim=3, ci_enc_dim=2, con_dim=4, co_dim=2, ic_dim=3, gen_dim=6, fac_dim=5)
NO_CON = dict(DIMS, ci_enc_dim=0, con_dim=0, co_dim=0)


def tiny(seed: int = 0, *, scale: float = 0.6, dtype=torch.float64, **changes) -> LFADS:
    """A tiny LFADS with every tensor (bias_hh and h0 included) random by name."""
    model = LFADS(LfadsConfig(**{**DIMS, **changes}), n_heldin=N_IN, t_obs=T, num_neurons=NT,
                  trial_length=TR).to(dtype)
    rng = np.random.default_rng(seed)
    state = {k: torch.from_numpy(rng.normal(0.0, scale, tuple(v.shape))).to(dtype)
             for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def counts(seed: int = 1, batch: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, (batch, T, N_IN)).astype(np.float64)


def rates(model: LFADS, x: np.ndarray) -> np.ndarray:
    """The model's deterministic rates of counts x, as numpy."""
    with torch.no_grad():
        heldin = torch.from_numpy(x).to(model.readout[0].weight.dtype)
        return model.log_rates_from_heldin(heldin).exp().numpy()


# --- the reference: lfads-torch's equations in numpy, float64 --------------------------

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_cell(p: dict, name: str, x: np.ndarray, h: np.ndarray, clip: float, hits: list):
    """One lfads-torch GRU step: rows (z, r, n); reset applied to h before its matmul."""
    w_ih, w_hh = p[f"{name}.weight_ih"], p[f"{name}.weight_hh"]
    b_ih, b_hh = p[f"{name}.bias_ih"], p[f"{name}.bias_hh"]
    H = h.shape[1]
    z = sigmoid(x @ w_ih[:H].T + b_ih[:H] + h @ w_hh[:H].T + b_hh[:H])
    r = sigmoid(x @ w_ih[H:2 * H].T + b_ih[H:2 * H] + h @ w_hh[H:2 * H].T + b_hh[H:2 * H])
    n = np.tanh(x @ w_ih[2 * H:].T + b_ih[2 * H:] + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
    new = z * h + (1.0 - z) * n
    hits.append(int((np.abs(new) > clip).sum()))
    return np.clip(new, -clip, clip)


def ref_encoder(p: dict, prefix: str, x: np.ndarray, clip: float, hits: list):
    """Bidirectional pass: forward states, backward states in forward time order."""
    B, steps = x.shape[0], x.shape[1]
    h0 = p[f"{prefix}_h0"]
    hf, hb = np.tile(h0[0], (B, 1)), np.tile(h0[1], (B, 1))
    fwd, bwd = [None] * steps, [None] * steps
    for t in range(steps):
        hf = ref_cell(p, f"{prefix}.fwd_gru.cell", x[:, t], hf, clip, hits)
        fwd[t] = hf
    for t in reversed(range(steps)):
        hb = ref_cell(p, f"{prefix}.bwd_gru.cell", x[:, t], hb, clip, hits)
        bwd[t] = hb
    return fwd, bwd


def ref_rates(model: LFADS, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Deterministic rates (posterior means) of held-in counts x (B, T, N_IN); and how many
    state elements the clip changed."""
    cfg = model.cfg
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    clip, S, L, hits = cfg.cell_clip, cfg.ic_enc_seq_len, cfg.ci_lag, []
    B, Z, C, U = x.shape[0], cfg.ic_dim, cfg.ci_enc_dim, cfg.co_dim
    fwd, bwd = ref_encoder(p, "encoder.ic_enc", x[:, :S] if S else x, clip, hits)
    h_ic = np.concatenate([fwd[-1], bwd[0]], axis=1)
    ic_mean = (h_ic @ p["encoder.ic_linear.weight"].T + p["encoder.ic_linear.bias"])[:, :Z]
    ci = np.zeros((B, TR, 2 * C))
    if cfg.use_controller:
        of, ob = ref_encoder(p, "encoder.ci_enc", x[:, S:], clip, hits)
        for t in range(T - S):
            if t - L >= 0:
                ci[:, S + t, :C] = of[t - L]
            if t + L < T - S:
                ci[:, S + t, C:] = ob[t + L]
    w_fac = p["decoder.rnn.cell.fac_linear.weight"]
    w_fac = w_fac / np.linalg.norm(w_fac, axis=1, keepdims=True)
    g = ic_mean @ p["decoder.ic_to_g0.weight"].T + p["decoder.ic_to_g0.bias"]
    f = g @ w_fac.T
    c = np.tile(p["decoder.con_h0"][0], (B, 1))
    rates = []
    for t in range(TR):
        u = np.zeros((B, 0))
        if cfg.use_controller:
            c = ref_cell(p, "decoder.rnn.cell.con_cell", np.concatenate([ci[:, t], f], 1), c,
                         clip, hits)
            co = c @ p["decoder.rnn.cell.co_linear.weight"].T + p["decoder.rnn.cell.co_linear.bias"]
            u = co[:, :U]
        g = ref_cell(p, "decoder.rnn.cell.gen_cell", u, g, clip, hits)
        f = g @ w_fac.T
        rates.append(np.exp(f @ p["readout.0.weight"].T + p["readout.0.bias"]))
    return np.stack(rates, axis=1), sum(hits)


# --- tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    dict(ci_lag=1), dict(ci_lag=2), NO_CON, dict(ci_lag=1, ic_enc_seq_len=3)],
    ids=["lag1", "lag2", "no-controller", "ic-enc-seq-len"])
def test_rates_match_the_reference_equations(changes):
    """Verify that the deterministic rates equal the numpy rewrite's to float64 rounding,
    with and without the controller, at ci_lag 1 and 2, and with a separate IC window."""
    model = tiny(**changes)
    x = counts()
    expected, _ = ref_rates(model, x)
    got = rates(model, x)
    assert got.shape == (4, TR, NT)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_float32_rates_match_the_reference_to_1e5():
    """Verify that the float32 model (as it runs in practice) agrees to ~1e-5 relative."""
    model64 = tiny(3)
    model32 = tiny(3, dtype=torch.float32)
    x = counts(4)
    expected, _ = ref_rates(model64, x)
    got = rates(model32, x)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)


def test_cell_clip_binds_and_matches_the_reference():
    """Verify that with a small cell_clip the clip changes states (and so the rates), and
    that the model still matches the reference there."""
    model = tiny(5, scale=1.5, cell_clip=0.4)
    x = counts(6)
    expected, hits = ref_rates(model, x)
    assert hits > 0
    got = rates(model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    loose = tiny(5, scale=1.5, cell_clip=100.0)
    unclipped, none = ref_rates(loose, x)
    assert none == 0 and not np.allclose(unclipped, expected)


def test_factor_rows_are_normalised_at_every_use():
    """Verify that scaling fac_linear's rows by positive numbers leaves the rates as they
    were, and that the weight in use has unit-norm rows."""
    model = tiny(7)
    x = torch.from_numpy(counts(8))
    before = model.log_rates_from_heldin(x)
    with torch.no_grad():
        model.decoder.rnn.cell.fac_linear.weight.mul_(torch.tensor([[0.1], [3], [7], [1], [20]],
                                                                   dtype=torch.float64))
    torch.testing.assert_close(model.log_rates_from_heldin(x), before)
    norms = model.decoder.rnn.cell.fac_linear.normalized_weight().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(5, dtype=torch.float64))


def test_parameter_names_and_shapes_are_lfads_torchs():
    """Verify that the state_dict's names and shapes are lfads-torch's, with the controller
    and without."""
    E, C, K, U, Z, G, F = (DIMS[k] for k in ("ic_enc_dim", "ci_enc_dim", "con_dim", "co_dim",
                                              "ic_dim", "gen_dim", "fac_dim"))
    cell = lambda prefix, d, h: {f"{prefix}.weight_ih": (3 * h, d),  # noqa: E731
                                 f"{prefix}.weight_hh": (3 * h, h), f"{prefix}.bias_ih": (3 * h,),
                                 f"{prefix}.bias_hh": (3 * h,)}
    base = {"encoder.ic_enc_h0": (2, 1, E), **cell("encoder.ic_enc.fwd_gru.cell", N_IN, E),
            **cell("encoder.ic_enc.bwd_gru.cell", N_IN, E),
            "encoder.ic_linear.weight": (2 * Z, 2 * E), "encoder.ic_linear.bias": (2 * Z,),
            "decoder.ic_to_g0.weight": (G, Z), "decoder.ic_to_g0.bias": (G,),
            "decoder.rnn.cell.fac_linear.weight": (F, G), "readout.0.weight": (NT, F),
            "readout.0.bias": (NT,), "ic_prior.mean": (Z,), "ic_prior.logvar": (Z,)}
    controller = {"encoder.ci_enc_h0": (2, 1, C), **cell("encoder.ci_enc.fwd_gru.cell", N_IN, C),
                  **cell("encoder.ci_enc.bwd_gru.cell", N_IN, C), "decoder.con_h0": (1, K),
                  **cell("decoder.rnn.cell.gen_cell", U, G),
                  **cell("decoder.rnn.cell.con_cell", 2 * C + F, K),
                  "decoder.rnn.cell.co_linear.weight": (2 * U, K),
                  "decoder.rnn.cell.co_linear.bias": (2 * U,),
                  "co_prior.logtaus": (U,), "co_prior.lognvars": (U,)}
    shapes = {k: tuple(v.shape) for k, v in tiny().state_dict().items()}
    assert shapes == {**base, **controller}
    plain = {**base, "decoder.con_h0": (1, 0), **cell("decoder.rnn.cell.gen_cell", 0, G),
             "co_prior.logtaus": (0,), "co_prior.lognvars": (0,)}
    assert {k: tuple(v.shape) for k, v in tiny(**NO_CON).state_dict().items()} == plain


def test_init_follows_lfads_torch():
    """Verify that the init is lfads-torch's: fan-in normal weights (encoder cells fan in+H,
    decoder cells in and H), gate biases 1/1/0, frozen zero bias_hh, zero h0, and the
    priors' starting values."""
    torch.manual_seed(0)
    m = LFADS(LfadsConfig(), n_heldin=107, t_obs=140, num_neurons=142, trial_length=180)
    std = lambda w: float(w.detach().std())  # noqa: E731
    enc = m.encoder.ic_enc.fwd_gru.cell
    dec = m.decoder.rnn.cell
    for got, fan in [(std(enc.weight_ih), 107 + 100), (std(enc.weight_hh), 107 + 100),
                     (std(dec.gen_cell.weight_ih), 4), (std(dec.gen_cell.weight_hh), 100),
                     (std(dec.con_cell.weight_ih), 160 + 40), (std(dec.con_cell.weight_hh), 80),
                     (std(m.readout[0].weight), 40), (std(m.decoder.ic_to_g0.weight), 100),
                     (std(m.encoder.ic_linear.weight), 200)]:
        assert got == pytest.approx(1 / math.sqrt(fan), rel=0.15)
    for cell in (enc, dec.gen_cell, dec.con_cell, m.encoder.ci_enc.bwd_gru.cell):
        H = cell.hidden_size
        assert torch.equal(cell.bias_ih, torch.cat([torch.ones(2 * H), torch.zeros(H)]))
        assert not cell.bias_hh.any() and not cell.bias_hh.requires_grad
    assert not m.encoder.ic_enc_h0.any() and not m.decoder.con_h0.any()
    assert not m.readout[0].bias.any() and not m.ic_prior.mean.any()
    assert torch.allclose(m.ic_prior.logvar.exp(), torch.tensor(0.1))
    assert not m.ic_prior.logvar.requires_grad
    assert torch.allclose(m.co_prior.logtaus.exp(), torch.tensor(10.0))
    assert torch.allclose(m.co_prior.lognvars.exp(), torch.tensor(0.1))


def test_family_interface_and_raw_counts():
    """Verify that num_neurons and trial_length are Nt and Tr, that max_spikes never binds,
    that large counts reach the model unclamped, and that a wrong input shape is refused."""
    model = tiny()
    assert (model.num_neurons, model.trial_length) == (NT, TR)
    assert float(np.float32(model.max_spikes)) >= NO_SPIKE_CLAMP
    x = torch.from_numpy(counts())
    big = x.clone()
    big[0, 2, 1] = 500.0
    assert not torch.allclose(model.log_rates_from_heldin(big)[0],
                              model.log_rates_from_heldin(x)[0])
    with pytest.raises(ValueError, match="held-in counts of shape"):
        model.log_rates_from_heldin(torch.zeros(2, TR, NT, dtype=torch.float64))


def test_sampling_and_dropout_only_in_the_training_path():
    """Verify that log_rates_from_heldin is deterministic even in training mode (and leaves
    the mode as it was), and that the sampling forward draws from the given generator."""
    model = tiny(dropout_rate=0.3).train()
    x = torch.from_numpy(counts())
    first = model.log_rates_from_heldin(x)
    assert model.training and model.decoder.rnn.training
    torch.testing.assert_close(model.log_rates_from_heldin(x), first)
    model.eval()
    draw = lambda seed: model(x, sample=True,  # noqa: E731
                              generator=torch.Generator().manual_seed(seed))
    a, b, c = draw(1), draw(1), draw(2)
    torch.testing.assert_close(a.log_rates, b.log_rates)
    assert not torch.allclose(a.log_rates, c.log_rates)
    assert not torch.allclose(a.log_rates, first)
    assert a.co_mean.shape == a.co_std.shape == (4, TR, 2) and (a.co_std > 0).all()


def test_lfads_torch_export_loads_weights_only_and_strictly(tmp_path):
    """Verify that a saved {state_dict, hparams, format} dict loads with weights_only=True
    and rebuilds a model with the same rates; and that bad exports are refused clearly."""
    source = tiny(9, dtype=torch.float32, ci_lag=2)
    hparams = {"encod_data_dim": N_IN, "encod_seq_len": T, "recon_seq_len": TR, **DIMS,
               "ci_lag": 2, "cell_clip": 5.0, "dropout_rate": 0.02, "cd_rate": 0.3,
               "ic_post_var_min": 1e-4, "ext_input_dim": 0, "ic_enc_seq_len": 0,
               "kl_co_scale": 1e-6, "readin_name": "identity"}
    path = tmp_path / "lfads.pt"
    torch.save({"state_dict": source.state_dict(), "hparams": hparams,
                "format": EXPORT_FORMAT}, path)
    data = torch.load(path, weights_only=True)
    model = load_lfads_export(data)
    assert not model.training and model.cfg.ci_lag == 2 and model.cfg.kl_co_scale == 1e-6
    x = torch.from_numpy(counts()).float()
    torch.testing.assert_close(model.log_rates_from_heldin(x), source.log_rates_from_heldin(x))
    with pytest.raises(ValueError, match="lacks hyperparameters"):
        load_lfads_export({**data, "hparams": {"encod_data_dim": N_IN}})
    with pytest.raises(ValueError, match="external inputs"):
        load_lfads_export({**data, "hparams": {**hparams, "ext_input_dim": 2}})
    with pytest.raises(ValueError, match="do not fit"):
        load_lfads_export({**data, "hparams": {**hparams, "gen_dim": 7}})
    with pytest.raises(ValueError, match="not an exported"):
        load_lfads_export({"state_dict": data["state_dict"]})


def test_factory_builds_lfads_from_the_config():
    """Verify that MODEL.FAMILY lfads builds LFADS from the LFADS keys, taking N_IN and T from
    the dataset when ENCOD_DATA_DIM / ENCOD_SEQ_LEN are 0."""
    opts = ["MODEL.FAMILY", "lfads", "LFADS.IC_ENC_DIM", 3, "LFADS.CI_ENC_DIM", 2,
            "LFADS.CON_DIM", 4, "LFADS.CO_DIM", 2, "LFADS.IC_DIM", 3, "LFADS.GEN_DIM", 6,
            "LFADS.FAC_DIM", 5]
    spec = get_spec("mc_maze_small")
    cfg = load_config(opts=opts + ["DATA.DATASET", "mc_maze_small", "DATA.BIN_MS", 20])
    model = build_model(cfg, num_neurons=spec.n_neurons, trial_length=sum(spec.bins(20)),
                        max_spikes=9)
    assert isinstance(model, LFADS) and model.max_spikes == NO_SPIKE_CLAMP
    assert (model.n_heldin, model.t_obs) == (spec.n_heldin, spec.bins(20)[0])
    cfg = load_config(opts=opts + ["LFADS.ENCOD_DATA_DIM", N_IN, "LFADS.ENCOD_SEQ_LEN", T])
    model = build_model(cfg, num_neurons=NT, trial_length=TR, max_spikes=9)
    assert (model.n_heldin, model.t_obs, model.cfg.gen_dim) == (N_IN, T, 6)


def test_lfads_export_loads_through_load_model_and_predict_rates(tmp_path):
    """Verify that `load_model` recognises an lfads-torch export (loaded weights-only) and
    that `predict_rates` gives its deterministic rates from the held-in counts alone,
    unclamped, with every neuron and bin of the model."""
    from nlb_ndt.checkpoint import load_model
    from nlb_ndt.inference import predict_rates

    source = tiny(4, dtype=torch.float32)
    hparams = {"encod_data_dim": N_IN, "encod_seq_len": T, "recon_seq_len": TR, **DIMS,
               "ci_lag": 1, "cell_clip": 5.0}
    path = tmp_path / "export.pt"
    torch.save({"state_dict": source.state_dict(), "hparams": hparams,
                "format": EXPORT_FORMAT}, path)
    model, info = load_model(path)
    assert info["format"] == EXPORT_FORMAT and info["cfg"].MODEL.FAMILY == "lfads"
    assert (info["num_neurons"], info["trial_length"], info["t_obs"]) == (NT, TR, T)
    x = counts(batch=3) * 40  # large counts: nothing may clamp them
    got = predict_rates(model, x.astype(np.int64))
    assert got.shape == (3, TR, NT) and got.dtype == np.float32
    np.testing.assert_allclose(got, rates(source, x.astype(np.float32)), rtol=1e-6)
