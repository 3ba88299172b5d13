#!/usr/bin/env bash
# The GPU figures in one run, for a machine with CUDA; prints one JSON summary line.
#
#   bash bench/gpu_check.sh            # from the repository root (or anywhere)
#   PYTHON=/path/to/python bash bench/gpu_check.sh
#
# Steps (each under its own `timeout`, about 10 minutes at most):
#   1. the CUDA tests: pytest -m gpu;
#   2. bench/train_speed.py --shape mc_maze --device cuda (target: <= 30 ms per epoch);
#   3. the same with --concurrent 8 (target: each copy keeps at least half its solo speed,
#      i.e. <= 2 x the solo seconds per epoch);
#   4. a 16-trial smoke search on the synthetic dataset in a temporary NLB_HOME, packed
#      at --gpus-per-trial 0.125 (8 trials per GPU): every trial done, and on a GPU;
#   5. the STNDT's and LFADS's epoch on mc_maze's shape (--model stndt, --model lfads),
#      to set against step 2's NDT (no target: the cost of each model family).
# A failed step is recorded (its exit code and last output line) and the next one runs.
# GPU_CHECK_SAMPLES changes the number of search trials (e.g. 2 to try the script on a
# CPU machine, where steps 2-3 fail and the search falls back to CPU trials).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SAMPLES=${GPU_CHECK_SAMPLES:-16}
WORK=$(mktemp -d /tmp/gpuchk.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Ray's temp dir (sessions, sockets) inside $WORK too, so nothing is left in /tmp/ray.
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_TMPDIR="$WORK"
# The search's data and results stay in the temporary NLB_HOME (all path variables).
for var in NLB_DATA_RAW NLB_CACHE_DIR NDT_CACHE_DIR RAY_TUNE_HOME CHECKPOINT_DIR \
           CONFIG_DIR SUBMISSION_VALIDATION_ROOT; do unset "$var"; done

# step NAME SECONDS CMD...: run CMD under a timeout; keep its output, exit code, seconds.
step() {
    local name=$1 limit=$2
    shift 2
    local t0 t1
    t0=$(date +%s.%N)
    timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.out" 2>&1
    echo $? >"$WORK/$name.rc"
    t1=$(date +%s.%N)
    echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}' >"$WORK/$name.seconds"
    echo "gpu_check: $name exit $(cat "$WORK/$name.rc") in $(cat "$WORK/$name.seconds") s" >&2
}

step pytest_gpu 100 "$PY" -m pytest -q -m gpu tests
step speed_solo 70 "$PY" bench/train_speed.py --shape mc_maze --device cuda --epochs 5
step speed_concurrent8 130 "$PY" bench/train_speed.py --shape mc_maze --device cuda \
    --epochs 5 --concurrent 8
step speed_stndt 60 "$PY" bench/train_speed.py --shape mc_maze --device cuda --epochs 3 \
    --model stndt
step speed_lfads 60 "$PY" bench/train_speed.py --shape mc_maze --device cuda --epochs 3 \
    --model lfads
export NLB_HOME="$WORK/nlb_home"
step search_data 60 sh -c "'$PY' -m nlb_ndt.synthetic --out '$NLB_HOME/raw' --quiet \
    && '$PY' generate_all_configs.py --quiet"
step search_packed 200 "$PY" run_hyperopt.py synthetic --smoke-test --samples "$SAMPLES" \
    --seed 0 --gpus-per-trial 0.125 --cpus-per-trial 1 --quiet

"$PY" - "$WORK" "$NLB_HOME" "$SAMPLES" <<'EOF'
import csv, json, statistics, sys
from pathlib import Path

work, home, samples = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])


def step(name):
    out = (work / f"{name}.out").read_text(errors="replace").strip().splitlines()
    return {"exit": int((work / f"{name}.rc").read_text()),
            "seconds": float((work / f"{name}.seconds").read_text()),
            "last_line": out[-1][-300:] if out else ""}


def json_line(name):
    for line in reversed((work / f"{name}.out").read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


summary = {name: step(name) for name in
           ("pytest_gpu", "speed_solo", "speed_concurrent8", "speed_stndt", "speed_lfads",
            "search_data", "search_packed")}
tests = summary["pytest_gpu"]
# Every CUDA test ran and passed (a skip means CUDA was not visible to torch).
tests["met"] = tests["exit"] == 0 and "passed" in tests["last_line"] \
    and "skipped" not in tests["last_line"]
solo, conc = json_line("speed_solo"), json_line("speed_concurrent8")
if solo:
    summary["speed_solo"].update(result=solo, target_s_per_epoch=0.030,
                                 met=solo["seconds_per_epoch"] <= 0.030)
if conc:
    each = conc["seconds_per_epoch_each"]
    summary["speed_concurrent8"].update(result=conc, median_s_per_epoch=statistics.median(each))
    if solo:
        # "keeps at least half its solo speed": every copy at most 2x the solo time.
        summary["speed_concurrent8"]["met"] = max(each) <= 2 * solo["seconds_per_epoch"]
for family in ("stndt", "lfads"):
    result = json_line(f"speed_{family}")
    if result:
        summary[f"speed_{family}"]["result"] = result
        if solo:
            summary[f"speed_{family}"]["epoch_vs_ndt"] = round(
                result["seconds_per_epoch"] / solo["seconds_per_epoch"], 2)
trials = home / "ray_results/neural-data-transformer/synthetic/synthetic-s0-smoke/trials.csv"
if trials.is_file():
    with trials.open() as f:
        rows = list(csv.DictReader(f))
    seconds = summary["search_packed"]["seconds"]
    summary["search_packed"].update(
        trials=len(rows), done=sum(r["status"] == "done" for r in rows),
        devices=sorted({r.get("device") or "?" for r in rows}),
        trials_per_hour=round(len(rows) * 3600 / seconds, 1) if seconds else None,
        met=len(rows) == samples and all(r["status"] == "done" for r in rows)
        and all((r.get("device") or "").startswith("gpu") for r in rows))
print(json.dumps(summary))
EOF
