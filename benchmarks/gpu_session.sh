#!/usr/bin/env bash
# One prepared call on an offline GPU machine whose python3 has CUDA jax, flax, optax and chex
# (this workplace's lent H100/H200): installs the carried wheels, probes which unroll factor pays
# (benchmarks/ppo_speed_probe.py), runs the PPO-vs-rejax comparison at 1, 256 and 2048 seeds with
# it, probes XLA command-buffer settings, and runs the test suite on the GPU. Each step has its own
# time limit so a slow or failed step still leaves the others' figures in $OUT. About 10 minutes. See benchmarks/README.md, "Offline GPU machine".
#
# Needs, relative to the repository root:
#   .whl/               gymnax 1.0.1, gymnasium, Farama-Notifications (pgjax's missing dependencies)
#   benchmarks/wheels/  the nine rejax wheels listed in benchmarks/README.md
# Usage:  OUT=/some/dir [STEPS=probe,bench,flags,precision,columns,constlr,rscale,bf16,offline,tests] bash benchmarks/gpu_session.sh
# The steps take about 13 minutes on an H100 (probe ~2.5, bench ~4, flags ~1.5, precision ~1.5, tests ~4) plus
# constlr, rscale, bf16 (~4 min) and offline (not yet run; ~1 min each expected otherwise), more than one 10-minute
# device call: name the steps a call should run in STEPS. The next session's suggestion: STEPS=bf16,bench,rscale.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PROBE_SEEDS=${PROBE_SEEDS:-2048}
PROBE_STEPS=${PROBE_STEPS:-32768}
BENCH_SEEDS=${BENCH_SEEDS:-1 256 2048}
BENCH_STEPS=${BENCH_STEPS:-500000}
# The 2048-seed runs of precision, constlr, rscale and bf16 (the GPU targets' size). Smaller values rehearse the
# script on a CPU, e.g. PYTHON=.../python3.12 SWEEP_SEEDS=2 SWEEP_STEPS=4096 PROBE_SEEDS=2 PROBE_STEPS=2048 ...
SWEEP_SEEDS=${SWEEP_SEEDS:-2048}
SWEEP_STEPS=${SWEEP_STEPS:-500000}
PYTHON=${PYTHON:-python3}  # the interpreter with CUDA jax
STEPS=${STEPS:-probe,bench,flags,precision,columns,constlr,rscale,bf16,offline,tests}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
case $PYTHON in  # an absolute path: the wrapper scripts below run from anywhere
    */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;
    *) PYTHON=$(command -v "$PYTHON") ;;
esac
exec > >(tee -a "$OUT/session.log") 2>&1

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true

pip_target() {  # pip_target DIR WHEEL...: install wheels into DIR without touching the image
    local dir=$1; shift
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$dir" "$@"
}
pip_target /tmp/pgjax-site .whl/*.whl || exit 1
REJAX=(--rejax-python /tmp/rejax-python)
pip_target /tmp/rejax-site benchmarks/wheels/*.whl .whl/gymnasium-*.whl .whl/farama_notifications-*.whl \
    || { echo "!! rejax wheels did not install: pgjax and the ceiling only"; REJAX=(--skip-rejax); }
printf '#!/bin/sh\nPYTHONPATH=/tmp/pgjax-site${PYTHONPATH:+:$PYTHONPATH} exec '$PYTHON' "$@"\n' > /tmp/pgjax-python
printf '#!/bin/sh\nPYTHONPATH=/tmp/rejax-site${PYTHONPATH:+:$PYTHONPATH} exec '$PYTHON' "$@"\n' > /tmp/rejax-python
chmod +x /tmp/pgjax-python /tmp/rejax-python

UNROLL=${UNROLL:-8}
if want probe; then
echo "== probe: unroll factors, shuffle, phases, trace ($PROBE_SEEDS seeds, $PROBE_STEPS steps)"
timeout 220 /tmp/pgjax-python benchmarks/ppo_speed_probe.py --seeds "$PROBE_SEEDS" --total-timesteps "$PROBE_STEPS" \
    --unroll 1 2 4 8 --shuffle-sort --phases --trace "$OUT/trace.json.gz" --json "$OUT/probe.json"
UNROLL=$("$PYTHON" - "$OUT/probe.json" <<'EOF' || echo "$UNROLL"
import json, sys
recs = [r for r in json.load(open(sys.argv[1]))["records"] if r.get("shuffle") == "packed" and r["variant"].startswith("whole")]
best = min(recs, key=lambda r: r["run_s"])
base = next(r for r in recs if r["unroll"] == 1)
# Only leave unroll 1 for a clear gain (5%): anything less is within run-to-run noise.
print(best["unroll"] if best["run_s"] < 0.95 * base["run_s"] else 1)
EOF
)
echo "== chosen unroll: $UNROLL"
fi
UNROLLS=$([ "$UNROLL" = 1 ] && echo 1 || echo "1 $UNROLL")

if want bench; then
echo "== pgjax vs rejax at $BENCH_SEEDS seeds"
# shellcheck disable=SC2086 # BENCH_SEEDS is a list
timeout 330 "$PYTHON" benchmarks/ppo_vs_rejax.py --seeds $BENCH_SEEDS --total-timesteps "$BENCH_STEPS" --eval-episodes 32 \
    --pgjax-python /tmp/pgjax-python "${REJAX[@]}" --pgjax-config "{\"unroll\": $UNROLL}" \
    --worker-timeout 150 --retries 0 --out "$OUT/ppo_vs_rejax_gpu.csv"
fi

if want flags; then
echo "== probe: XLA command buffers off, and with while loops and conditionals captured"
CB_ALL=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL
XLA_FLAGS="--xla_gpu_enable_command_buffer=" timeout 60 /tmp/pgjax-python benchmarks/ppo_speed_probe.py \
    --seeds "$PROBE_SEEDS" --total-timesteps "$PROBE_STEPS" --unroll $UNROLLS --label cmdbuf-off --json "$OUT/probe_cmdbuf_off.json"
XLA_FLAGS="--xla_gpu_enable_command_buffer=$CB_ALL --xla_gpu_graph_min_graph_size=1" timeout 60 /tmp/pgjax-python \
    benchmarks/ppo_speed_probe.py --seeds "$PROBE_SEEDS" --total-timesteps "$PROBE_STEPS" --unroll $UNROLLS \
    --label cmdbuf-while --json "$OUT/probe_cmdbuf_while.json"
fi
pgjax2048() {  # pgjax2048 LIMIT_S CONFIG_JSON NAME: ppo_vs_rejax.py's pgjax row alone at 2048 seeds -> $OUT/NAME.csv
    timeout "$1" "$PYTHON" benchmarks/ppo_vs_rejax.py --seeds "$SWEEP_SEEDS" --total-timesteps "$SWEEP_STEPS" \
        --skip-rejax --skip-ceiling --eval-episodes 32 \
        --pgjax-python /tmp/pgjax-python --pgjax-config "$2" --worker-timeout $(($1 - 10)) --retries 0 --out "$OUT/$3.csv"
}

probe_variant() {  # probe_variant LABEL NAME ARGS...: ppo_speed_probe.py at the chosen unroll -> $OUT/probe_NAME.json
    local label=$1 name=$2; shift 2
    echo "== probe: $label ($PROBE_SEEDS seeds, unroll $UNROLL)"
    timeout 90 /tmp/pgjax-python benchmarks/ppo_speed_probe.py --seeds "$PROBE_SEEDS" --total-timesteps "$PROBE_STEPS" \
        --unroll $UNROLL --label "$label" --json "$OUT/probe_$name.json" "$@"
}

if want precision; then
# On the CPU (full float32 matmuls) 1024 of 1024 seeds reach 475 (benchmarks/ppo_seed_sweep.py); on the GPU,
# whose default float32 matmul is TF32, 2043 of 2048 did. Is TF32 what leaves seeds behind?
echo "== pgjax at $SWEEP_SEEDS seeds with full float32 matmuls (JAX_DEFAULT_MATMUL_PRECISION=highest)"
JAX_DEFAULT_MATMUL_PRECISION=highest pgjax2048 200 "{\"unroll\": $UNROLL}" ppo_highest_precision
fi

if want columns; then
# On a CPU a 2-wide policy head runs 4x faster as two matrix-vector products than as one matmul, vmapped over 32
# seeds (pgjax.nets.Dense, fourteenth session); on a GPU pgjax keeps the matmul. Does the GPU gain too?
for cols in off on; do
    probe_variant "columns-$cols" "columns_$cols" --dense-columns $cols
done
fi

sweep2048() {  # sweep2048 WHAT OVERRIDE_JSON NAME: ppo_seed_sweep.py over 2048 seeds in one chunk
    echo "== pgjax at $SWEEP_SEEDS seeds with $1 (ppo_seed_sweep.py --override '$2')"
    timeout 200 /tmp/pgjax-python benchmarks/ppo_seed_sweep.py --seeds "$SWEEP_SEEDS" --chunk "$SWEEP_SEEDS" \
        --total-timesteps "$SWEEP_STEPS" --eval-episodes 32 \
        --override "$2" --out "$OUT/sweep2048_$3.npz"
}

if want constlr; then
# On the CPU the annealed learning rate is what leaves seeds behind (1020 of 1024 annealed, 1024 of 1024 with
# anneal_lr=False; benchmarks/README.md, seventh session). Does the same hold for 2048 seeds on the GPU?
sweep2048 "a constant learning rate" '{"anneal_lr": false}' const_lr
fi

if want rscale; then
# On the CPU rewards scaled by 0.1 left no seed behind either, with the annealed schedule kept (1024 of 1024, every
# seed at 500.0; unscaled on the same VM: benchmarks/README.md, thirteenth session). And on 2048 GPU seeds?
sweep2048 "rewards scaled by 0.1" '{"reward_scale": 0.1}' reward_scale
fi

if want bf16; then
# At 2048 seeds both pgjax and rejax are bound by memory traffic over [2048, 128, 64] activations (fifth session's
# trace); bfloat16 hidden layers (PPOConfig.compute_dtype, parameters and heads float32) halve its bytes. Speed per update
# against float32 (probe, same unroll), then the comparison's 2048 seeds with evaluation: faster, and does every
# seed still learn? Compare its run time with the bench step's rejax row (same call) or the README's.
for dtype in float32 bfloat16; do
    probe_variant "$dtype" "$dtype" --compute-dtype $dtype
done
echo "== pgjax at $SWEEP_SEEDS seeds with bfloat16 hidden layers (ppo_vs_rejax.py, rows pgjax-bfloat16)"
pgjax2048 150 "{\"unroll\": $UNROLL, \"compute_dtype\": \"bfloat16\"}" ppo_bfloat16
fi

if want offline; then
# The one GPU failure not yet understood (README, Known issues): its full message.
echo "== test_offline_neural.py::test_estimators_on_policy_with_terminal_states on the GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=/tmp/pgjax-site${PYTHONPATH:+:$PYTHONPATH} timeout 200 \
    "$PYTHON" -m pytest -q -p no:cacheprovider --tb=long \
    "tests/test_offline_neural.py::test_estimators_on_policy_with_terminal_states" > "$OUT/pytest_offline_gpu.log" 2>&1
tail -40 "$OUT/pytest_offline_gpu.log"
fi

if want tests; then
echo "== the test suite on the GPU (notebooks left out: no Jupyter kernel there); one line per test"
XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=/tmp/pgjax-site${PYTHONPATH:+:$PYTHONPATH} timeout "${TEST_LIMIT:-240}" \
    "$PYTHON" -m pytest -v -n 8 --dist loadfile --ignore=tests/test_notebooks.py --ignore=tests/test_notebooks_2.py -p no:cacheprovider --tb=short \
    > "$OUT/pytest_gpu.log" 2>&1
grep -E "(FAILED|ERROR|passed|failed)" "$OUT/pytest_gpu.log" | tail -20
fi
date -u
