"""Latent-dynamics models behind the synthetic NLB datasets (used by `nlb_ndt.synthetic`).

Every task family makes, per NWB file ("session"), a trials table, latents z(t) on the
file's 1 ms grid (T, K) and, where the real dataset has one, a 2-D behaviour series. Rates
are a log-linear readout, rate(t) = exp(z(t) @ C + b) spikes/ms, with baselines of 5-40 Hz;
spikes are Poisson at 1 ms. Families:

- maze (MC_Maze and the scaling sets): a preparatory state per condition (trial_type x
  trial_version) that, ~100 ms before movement onset, starts rotating in K/2 planes at
  different frequencies while its amplitude swells and decays; hand velocity is a linear
  readout of dz/dt, `lag` ms later (the dataset's behaviour lag).
- area2 (Area2_Bump): the same machinery without a preparatory state, tuned to reach
  direction, with different responses to active reaches and passive bumps.
- rtt (MC_RTT): continuous, damped rotational noise; 600 ms back-to-back trials.
- dmfc (DMFC_RSG): a measurement ramp between ready and set, then a trajectory traversed
  at a speed inversely proportional to the produced interval tp (set -> go).

All families add shared Ornstein-Uhlenbeck latent noise, so single trials differ from the
condition mean in a way that held-in neurons reveal.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter

# Behaviour lags of nlb_tools' PARAMS (ms): behaviour at t + lag follows the latents at t.
_LAGS = {"mc_maze": 100, "mc_rtt": 140, "area2_bump": -20}
_SCALING_LAG = 120
_MIN_HZ, _MAX_HZ = 5.0, 40.0
_VEL_GAIN = 6000.0  # latent units per ms -> mm/s, peak hand speeds of a few hundred mm/s


@dataclass
class Session:
    """The content of one NWB file. Times in `trials` are integer ms on the file's clock."""

    trials: dict[str, np.ndarray]
    descriptions: dict[str, str]
    latents: np.ndarray  # (T, K) float32, T = end_ms
    behavior: np.ndarray | None  # (T, 2) float64
    end_ms: int
    spike_times: list[np.ndarray] = field(default_factory=list)  # per unit, seconds

    @property
    def n_trials(self) -> int:
        return len(self.trials["start_time"])

    def trial_columns(self) -> dict[str, tuple[np.ndarray, str]]:
        """Trial columns beyond start/stop as NWB values (`*_time` in seconds)."""
        out = {}
        for name, values in self.trials.items():
            if name in ("start_time", "stop_time") or name.startswith("_"):
                continue  # start/stop are NWB's own columns; "_" marks internal ones
            if name.endswith("_time"):
                values = values / 1000.0
            out[name] = (values, self.descriptions[name])
        return out


@dataclass
class Simulation:
    """A whole synthetic dataset: readout, units and both sessions."""

    seed: int
    C: np.ndarray  # (K, N) readout weights
    b: np.ndarray  # (N,) log baseline rates, log(spikes per ms)
    unit_ids: np.ndarray  # (N,) int
    heldout: np.ndarray  # (N,) bool
    train: Session
    test: Session

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)


def simulate(spec, *, seed: int, counts: tuple[int, int, int]) -> Simulation:
    """Simulate the dataset `spec` with (n_train, n_val, n_test) trials."""
    root = np.random.SeedSequence([int(seed), zlib.crc32(spec.name.encode())])
    model_rng, train_rng, test_rng = (np.random.default_rng(s) for s in root.spawn(3))
    task = _TASKS[spec.kind](spec, model_rng)

    n = spec.n_neurons
    baseline_hz = np.exp(model_rng.uniform(np.log(_MIN_HZ), np.log(_MAX_HZ), n))
    b = np.log(baseline_hz / 1000.0)
    C = model_rng.normal(0.0, task.gain / np.sqrt(task.K), (task.K, n))
    # Held-out units are scattered among the ids, as in the real files.
    heldout = np.zeros(n, bool)
    heldout[model_rng.choice(n, spec.n_heldout, replace=False)] = True
    unit_ids = np.arange(n)

    n_train, n_val, n_test = counts
    sessions = []
    for rng, n_trials, test in ((train_rng, n_train + n_val, False), (test_rng, n_test, True)):
        sess = task.session(rng, n_trials)
        split = np.full(n_trials, "test" if test else "train", dtype=object)
        if not test:
            split[_stratified(rng, task.strata(sess), n_val)] = "val"
        sess.trials["split"] = split.astype(str)
        sess.descriptions["split"] = "NLB data split: train, val or test"
        sess.spike_times = sample_spikes(rng, sess.latents, C, b)
        sessions.append(sess)
    return Simulation(seed=int(seed), C=C, b=b, unit_ids=unit_ids, heldout=heldout,
                      train=sessions[0], test=sessions[1])


def merge_sessions(first: Session, second: Session) -> Session:
    """One continuous session: `first`, then `second` shifted as NWBDataset shifts files.

    NWBDataset starts each further file at the next 100 ms boundary at least 50 ms after
    the previous one ends; using the same offset keeps every trial on the same bin grid
    (and with the same trial ids) as when the two files are loaded side by side.
    """
    shift = int(np.ceil(((first.end_ms - 1) / 1000.0 + 0.05) * 10) * 100)
    trials = {}
    for name, values in first.trials.items():
        later = second.trials[name]
        if name.endswith("_time"):
            later = later + shift
        trials[name] = np.concatenate([values, later])
    end_ms = shift + second.end_ms
    behavior = None
    if first.behavior is not None and second.behavior is not None:
        behavior = np.zeros((end_ms, first.behavior.shape[1]))
        behavior[:first.end_ms] = first.behavior
        behavior[shift:] = second.behavior
    spikes = [np.concatenate([a, b + shift / 1000.0])
              for a, b in zip(first.spike_times, second.spike_times)]
    return Session(trials=trials, descriptions=first.descriptions,
                   latents=np.zeros((0, first.latents.shape[1]), np.float32),
                   behavior=behavior, end_ms=end_ms, spike_times=spikes)


def sample_spikes(rng: np.random.Generator, latents: np.ndarray, C: np.ndarray,
                  b: np.ndarray, chunk: int = 50_000) -> list[np.ndarray]:
    """Poisson spike times (s) per unit at 1 ms; each spike placed inside its ms."""
    n = C.shape[1]
    per_unit: list[list[np.ndarray]] = [[] for _ in range(n)]
    for t0 in range(0, len(latents), chunk):
        counts = rng.poisson(np.exp(latents[t0:t0 + chunk].astype(np.float64) @ C + b))
        t_idx, n_idx = np.nonzero(counts)
        reps = counts[t_idx, n_idx]
        t_idx, n_idx = np.repeat(t_idx, reps) + t0, np.repeat(n_idx, reps)
        order = np.argsort(n_idx, kind="stable")
        bounds = np.searchsorted(n_idx[order], np.arange(n + 1))
        t_sorted = t_idx[order]
        for j in range(n):
            per_unit[j].append(t_sorted[bounds[j]:bounds[j + 1]])
    times = []
    for j in range(n):
        idx = np.concatenate(per_unit[j])
        # Sub-ms offsets away from the edges, so nlb_tools bins each spike into its ms.
        times.append(np.sort((idx + rng.uniform(0.05, 0.95, len(idx))) / 1000.0))
    return times


def binned_rates(latents: np.ndarray, C: np.ndarray, b: np.ndarray, bin_ms: int,
                 chunk_bins: int = 20_000) -> np.ndarray:
    """Expected spikes per `bin_ms` bin (sum of the 1 ms rates), bins starting at 0 ms.

    A last partial bin sums what there is, as nlb_tools' resample does.
    """
    t = len(latents)
    n_bins = -(-t // bin_ms)
    out = np.empty((n_bins, C.shape[1]))
    for i0 in range(0, n_bins, chunk_bins):
        i1 = min(i0 + chunk_bins, n_bins)
        lam = np.exp(latents[i0 * bin_ms:i1 * bin_ms].astype(np.float64) @ C + b)
        pad = (i1 - i0) * bin_ms - len(lam)
        if pad:
            lam = np.vstack([lam, np.zeros((pad, lam.shape[1]))])
        out[i0:i1] = lam.reshape(i1 - i0, bin_ms, -1).sum(axis=1)
    return out


# --------------------------------------------------------------------------- helpers


def _stratified(rng: np.random.Generator, strata: np.ndarray, n_pick: int) -> np.ndarray:
    """Indices of `n_pick` trials spread evenly over the strata (round robin)."""
    groups = [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    picked: list[int] = []
    depth = 0
    while len(picked) < n_pick:
        for g in groups:
            if depth < len(g) and len(picked) < n_pick:
                picked.append(int(g[depth]))
        depth += 1
    return np.array(sorted(picked), dtype=int)


def _ou_noise(rng: np.random.Generator, t: int, k: int, tau_ms: float,
              sd: float) -> np.ndarray:
    """Ornstein-Uhlenbeck noise (T, K) at 1 ms with stationary s.d. `sd`."""
    rho = np.exp(-1.0 / tau_ms)
    x = lfilter([sd * np.sqrt(1 - rho**2)], [1.0, -rho], rng.normal(size=(t, k)), axis=0)
    return x


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _uniform_ms(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    return rng.integers(lo, hi + 1, n)


def _lagged(v: np.ndarray, lag: int) -> np.ndarray:
    """out[t] = v[t - lag], zero where undefined."""
    out = np.zeros_like(v)
    if lag >= 0:
        out[lag:] = v[:len(v) - lag]
    else:
        out[:lag] = v[-lag:]
    return out


# --------------------------------------------------------------------------- task families


class _Reach:
    """Maze reaching (with preparation) and Area2 reaches / bumps (without)."""

    K = 8
    gain = 0.7  # readout scale: true-rate co-bps ~0.25 at 5 ms for the maze shapes

    def __init__(self, spec, rng: np.random.Generator):
        self.area2 = spec.kind == "area2"
        self.lag = _LAGS.get(spec.name, _SCALING_LAG)
        if self.area2:
            self.conds = [(d, bump) for bump in (False, True) for d in range(0, 360, 45)]
            basis = {bump: rng.normal(0, 0.8, (self.K, 2)) for bump in (False, True)}
            self.x0 = np.array([basis[bump] @ [np.cos(np.radians(d)), np.sin(np.radians(d))]
                                for d, bump in self.conds])
            # No preparatory state: activity rises from rest, sharper for passive bumps.
            self.lead, self.prep, self.beta, self.tau_decay = -20, 0.0, 2.5, 250.0
        else:
            n_types = 36 if spec.name == "mc_maze" else 9  # 108 or 27 conditions
            self.conds = [(t, v) for t in range(1, n_types + 1) for v in range(3)]
            self.x0 = rng.normal(0, 0.6, (len(self.conds), self.K))
            self.lead, self.prep, self.beta, self.tau_decay = 100, 1.0, 2.0, 300.0
        self.omega = 2 * np.pi * np.array([1.2, 1.9, 2.6, 3.4]) / 1000.0  # rad per ms
        self.W = rng.normal(0, 1.0 / np.sqrt(self.K), (2, self.K))

    def strata(self, sess: Session) -> np.ndarray:
        return sess.trials["_cond"]

    def session(self, rng: np.random.Generator, n: int) -> Session:
        cond = rng.permutation(np.resize(np.arange(len(self.conds)), n))
        if self.area2:
            pre, post, lo = _uniform_ms(rng, 400, 600, n), _uniform_ms(rng, 650, 800, n), 0
            target_on = None
        else:
            # Windows are -250..+450 ms around movement onset (+200 ms forward, which may
            # run into the next trial); the preparatory ramp needs ~350 ms after target on.
            lo = _uniform_ms(rng, 50, 100, n)  # start -> target on
            pre = lo + _uniform_ms(rng, 350, 600, n)  # start -> movement onset
            post = _uniform_ms(rng, 480, 540, n)
        iti = _uniform_ms(rng, 10, 60, n)
        start = 500 + np.concatenate([[0], np.cumsum(pre + post + iti)[:-1]])
        move = start + pre
        stop = move + post
        end_ms = int(stop[-1] + 1000)
        trials = {"start_time": start, "stop_time": stop, "move_onset_time": move,
                  "_cond": cond}
        desc = {"move_onset_time": "movement onset (s)"}
        if self.area2:
            trials["cond_dir"] = np.array([float(self.conds[c][0]) for c in cond])
            trials["ctr_hold_bump"] = np.array([bool(self.conds[c][1]) for c in cond])
            desc.update(cond_dir="reach / bump direction (deg)",
                        ctr_hold_bump="passive bump during centre hold")
        else:
            target_on = start + lo
            trials["target_on_time"] = target_on
            trials["trial_type"] = np.array([self.conds[c][0] for c in cond])
            trials["trial_version"] = np.array([self.conds[c][1] for c in cond])
            desc.update(target_on_time="target onset (s)", trial_type="maze condition",
                        trial_version="maze version (0-2)")

        z = _ou_noise(rng, end_ms, self.K, tau_ms=60.0, sd=0.3)
        dz = np.zeros((end_ms, self.K))
        speed = 1.0 + 0.05 * rng.normal(size=n)
        x0 = self.x0[cond] + rng.normal(0, 0.15, (n, self.K))
        for i in range(n):
            t_dyn = move[i] - self.lead
            a = int(target_on[i]) if target_on is not None else int(t_dyn)
            e = min(int(t_dyn) + 1400, end_ms)
            t = np.arange(a, e)
            seg = self._trajectory(t - t_dyn, t - a, x0[i], speed[i])
            z[a:e] += seg
            grad = np.gradient(seg, axis=0)
            grad[t < t_dyn] = 0.0  # the hand moves only once the rotation has started
            dz[a:e] += grad
        behavior = _VEL_GAIN * _lagged(dz @ self.W.T, self.lag)
        return Session(trials=trials, descriptions=desc, latents=z.astype(np.float32),
                       behavior=behavior, end_ms=end_ms)

    def _trajectory(self, s: np.ndarray, since_target: np.ndarray, x0: np.ndarray,
                    speed: float) -> np.ndarray:
        """Latents (L, K) at times s (ms) relative to the start of the rotation."""
        sp = np.maximum(s, 0.0)
        ramp = self.prep * _smoothstep((since_target - 50.0) / 200.0)
        rise = self.beta * (1 - np.exp(-sp / 60.0))
        swell = np.exp(-sp / self.tau_decay) * (self.prep + rise)
        amp = np.where(s < 0, ramp, swell)
        phase = speed * self.omega[None, :] * (sp - 40.0 * (1 - np.exp(-sp / 40.0)))[:, None]
        x, y = x0[0::2], x0[1::2]
        out = np.empty((len(s), self.K))
        out[:, 0::2] = amp[:, None] * (x * np.cos(phase) - y * np.sin(phase))
        out[:, 1::2] = amp[:, None] * (x * np.sin(phase) + y * np.cos(phase))
        return out


class _Rtt:
    """Continuous random-target reaching: damped rotational noise, 600 ms trials."""

    K = 8
    gain = 0.8

    def __init__(self, spec, rng: np.random.Generator):
        self.lag = _LAGS["mc_rtt"]
        self.omega = 2 * np.pi * np.array([0.6, 1.1, 1.7, 2.4]) / 1000.0
        self.W = rng.normal(0, 1.0 / np.sqrt(self.K), (2, self.K))

    def strata(self, sess: Session) -> np.ndarray:
        return np.zeros(sess.n_trials, int)

    def session(self, rng: np.random.Generator, n: int) -> Session:
        start = 300 + 600 * np.arange(n)
        stop = start + 600
        end_ms = int(stop[-1] + 600)
        rho = np.exp(-1.0 / 150.0)
        z = np.empty((end_ms, self.K))
        for j, om in enumerate(self.omega):
            w = rng.normal(size=end_ms) + 1j * rng.normal(size=end_ms)
            for _ in range(2):  # two passes: smooth, rotating trajectories
                w = lfilter([1 - rho], [1.0, -rho * np.exp(1j * om)], w)
            w *= 0.7 / w.std()
            z[:, 2 * j], z[:, 2 * j + 1] = w.real, w.imag
        z += _ou_noise(rng, end_ms, self.K, tau_ms=40.0, sd=0.2)
        behavior = 150.0 * _lagged(z @ self.W.T, self.lag)
        return Session(trials={"start_time": start, "stop_time": stop}, descriptions={},
                       latents=z.astype(np.float32), behavior=behavior, end_ms=end_ms)


class _Dmfc:
    """Ready-set-go interval reproduction: speed of the set->go trajectory scales with 1/tp."""

    K = 6
    gain = 0.5
    SHORT_TS = (480, 560, 640, 720, 800)
    LONG_TS = (800, 900, 1000, 1100, 1200)

    def __init__(self, spec, rng: np.random.Generator):
        # Interval index outermost: every 8 consecutive conditions cover all (is_eye, theta,
        # is_short) groups, so even small sets have trials in each (tp corr needs >= 2).
        self.conds = [(eye, theta, short, (self.SHORT_TS if short else self.LONG_TS)[k])
                      for k in range(5) for eye in (False, True) for theta in (0.0, 180.0)
                      for short in (True, False)]
        self.offset = {key: rng.normal(0, 0.5, self.K)
                       for key in {c[:3] for c in self.conds}}
        self.U = rng.normal(0, 0.8, (self.K, 3))  # production trajectory
        self.V = rng.normal(0, 0.8, (self.K, 2))  # measurement ramp

    def strata(self, sess: Session) -> np.ndarray:
        t = sess.trials
        return 4 * t["is_eye"].astype(int) + 2 * (t["theta"] > 0) + t["is_short"].astype(int)

    def session(self, rng: np.random.Generator, n: int) -> Session:
        cond = rng.permutation(np.resize(np.arange(len(self.conds)), n))
        eye = np.array([self.conds[c][0] for c in cond])
        theta = np.array([self.conds[c][1] for c in cond])
        short = np.array([self.conds[c][2] for c in cond])
        ts = np.array([float(self.conds[c][3]) for c in cond])
        outlier = rng.random(n) < 0.03
        tp = ts * (1 + 0.1 * rng.normal(size=n)) + 40.0
        tp[outlier] *= rng.uniform(1.4, 1.8, outlier.sum())
        tp = np.clip(np.round(tp), 300, 1450)
        fix = _uniform_ms(rng, 500, 900, n)  # start -> ready
        post = _uniform_ms(rng, 400, 600, n)  # go -> stop
        iti = _uniform_ms(rng, 100, 300, n)
        dur = fix + ts.astype(int) + tp.astype(int) + post
        start = 1000 + np.concatenate([[0], np.cumsum(dur + iti)[:-1]])
        ready = start + fix
        set_t = ready + ts.astype(int)
        go = set_t + tp.astype(int)
        stop = go + post
        end_ms = int(stop[-1] + 1000)

        z = _ou_noise(rng, end_ms, self.K, tau_ms=80.0, sd=0.25)
        for i in range(n):
            a, e = int(ready[i]) - 200, min(int(go[i]) + 800, end_ms)
            t = np.arange(a, e).astype(float)
            after = np.maximum(t - go[i], 0.0)
            env = _smoothstep((t - a) / 150.0) * np.exp(-after / 150.0)
            seg = env[:, None] * self.offset[(eye[i], theta[i], short[i])][None, :]
            m = np.clip(t - ready[i], 0, ts[i]) / 1000.0
            meas = np.stack([m, m * m], 1) @ self.V.T
            meas *= np.exp(-np.maximum(t - set_t[i], 0.0) / 100.0)[:, None]
            p = np.clip((t - set_t[i]) / tp[i], 0.0, 1.0)
            prod = np.stack([np.sin(np.pi * p), 1 - np.cos(np.pi * p), p], 1) @ self.U.T
            prod *= np.exp(-after / 150.0)[:, None]
            z[a:e] += seg + meas + prod
        trials = {
            "start_time": start, "stop_time": stop, "ready_time": ready, "set_time": set_t,
            "go_time": go, "is_outlier": outlier, "is_eye": eye, "theta": theta,
            "is_short": short, "ts": ts, "tp": tp,
        }
        desc = {
            "ready_time": "ready cue (s)", "set_time": "set cue (s)",
            "go_time": "response (s)",
            "is_outlier": "tp outlier", "is_eye": "eye (True) or hand response",
            "theta": "target direction (deg)", "is_short": "short prior block",
            "ts": "sample interval (ms)", "tp": "produced interval (ms)",
        }
        return Session(trials=trials, descriptions=desc, latents=z.astype(np.float32),
                       behavior=None, end_ms=end_ms)


_TASKS = {"maze": _Reach, "area2": _Reach, "rtt": _Rtt, "dmfc": _Dmfc}
