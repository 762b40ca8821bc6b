#!/usr/bin/env bash
# The GPU check: one script, at most 10 minutes on one fresh GPU machine. It creates a venv, installs
# with the CUDA jax, checks that jax sees the GPU, times ppo.py and bpo.py on ant with 16 seeds
# (throughput.py, training program only), with the base preset and with the add-on `wide_rollout`,
# runs a short `bpo.py --num-seeds 256` on CartPole-v1 with a checkpoint and `--resume`, and prints
# one table: env steps/s, compile seconds and device memory, each next to this project's CPU figure.
# Every step has its own time limit (cut to what is left of the 10 minutes); a failed step is a row
# marked failed, and the table is printed whatever happens.
#
#     bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#     bash benchmarks/gpu_check.sh --cpu      # the CPU fallback: the active python, no install,
#                                             # CartPole-v1 in place of ant, 32 seeds in place of 256
#
# Environment: GPU_CHECK_OUT (the folder for logs and outputs, default runs/gpu_check),
# GPU_CHECK_BUDGET (seconds for all the steps: 590, or 1200 with --cpu, whose step limits are 3x),
# GPU_CHECK_VENV (an existing venv to use instead of installing: a machine without network access
# needs one, or PIP_FIND_LINKS pointing at a wheelhouse), GPU_CHECK_ENV (the env id of the
# throughput steps), GPU_CHECK_SEEDS (the seeds of the CartPole run).
set -u
cd "$(dirname "$0")/.."
MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
# Seconds for every step together, and a factor on each step's limit (a CPU compiles and trains slower).
if [[ $MODE == gpu ]]; then BUDGET=${GPU_CHECK_BUDGET:-590} SCALE=1; else BUDGET=${GPU_CHECK_BUDGET:-1200} SCALE=3; fi
rm -rf "$OUT/cartpole" && mkdir -p "$OUT" && : > "$OUT/steps.tsv"
export JAX_COMPILATION_CACHE_DIR="$OUT/jax-cache"  # --resume recompiles the same program: cached
export BPO_HEARTBEAT_SECONDS=30
START=$(date +%s)

# step NAME LIMIT COMMAND...: run it under its time limit, log to $OUT/NAME.log, note its outcome.
step() {
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        printf '%s\tskipped (no time left)\t0\n' "$name" >>"$OUT/steps.tsv"
        return 1
    fi
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$? status=ok
    ((rc == 124 || rc == 137)) && status="timed out (${limit}s)"
    ((rc != 0 && rc != 124 && rc != 137)) && status="failed (exit $rc)"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$OUT/steps.tsv"
    tail -n 3 "$OUT/$name.log"
    return $rc
}

if [[ $MODE == gpu ]]; then
    ENV_ID=${GPU_CHECK_ENV:-ant}
    SEEDS=${GPU_CHECK_SEEDS:-256}
    if [[ -n ${GPU_CHECK_VENV:-} ]]; then
        PY=$GPU_CHECK_VENV/bin/python
    else
        PY=$OUT/venv/bin/python
        step install 200 bash -c "python3 -m venv '$OUT/venv' && '$PY' -m pip install -q -r requirements.txt 'jax[cuda12]==0.10.2'"
    fi
    step jax_sees_gpu 60 "$PY" -c "import jax; print(jax.devices()); assert jax.default_backend() == 'gpu', jax.default_backend()"
else
    ENV_ID=${GPU_CHECK_ENV:-CartPole-v1}
    SEEDS=${GPU_CHECK_SEEDS:-32}
    PY=$(command -v python)
    step jax_sees_cpu 60 "$PY" -c "import jax; print(jax.devices()); assert jax.default_backend() == 'cpu'"
fi

# A Brax id gets mujoco_ppo (bpo.py: + ppo_bpo_zero1.0) without --preset; name them for the add-on.
if [[ $ENV_ID == CartPole-v1 ]]; then PPO_BASE=cartpole_ppo; else PPO_BASE=mujoco_ppo; fi
TP=("$PY" throughput.py --training-only --iterations 1 --repeats 2)
step ppo 100 "${TP[@]}" --out "$OUT/ppo.json" ppo.py --env-id "$ENV_ID" --num-seeds 16 --preset $PPO_BASE
step bpo 120 "${TP[@]}" --out "$OUT/bpo.json" bpo.py --env-id "$ENV_ID" --num-seeds 16 --preset $PPO_BASE ppo_bpo_zero1.0
step ppo_wide 70 "${TP[@]}" --out "$OUT/ppo_wide.json" ppo.py --env-id "$ENV_ID" --num-seeds 16 --preset $PPO_BASE wide_rollout
step bpo_wide 90 "${TP[@]}" --out "$OUT/bpo_wide.json" bpo.py --env-id "$ENV_ID" --num-seeds 16 --preset $PPO_BASE ppo_bpo_zero1.0 wide_rollout
# 5 intervals of 2 iterations (256 env steps each) per seed, a checkpoint after each; then 2 more by --resume.
step cartpole_run 70 "$PY" bpo.py --env-id CartPole-v1 --num-seeds "$SEEDS" --total-timesteps 2560 --eval-every 512 \
    --checkpoint-every 1 --output-dir "$OUT/cartpole"
cp "$OUT/cartpole/summary.json" "$OUT/cartpole_run_summary.json" 2>/dev/null
step cartpole_resume 50 "$PY" bpo.py --resume "$OUT/cartpole" --total-timesteps 3584

# The table, whatever happened above (with the system's python if the venv's is missing).
[[ -x $PY ]] || PY=python3
"$PY" benchmarks/gpu_check_table.py "$OUT" "$MODE" "$ENV_ID" "$SEEDS" || echo "the table could not be printed: see $OUT"
echo "logs and outputs in $OUT ($(($(date +%s) - START)) s)"
