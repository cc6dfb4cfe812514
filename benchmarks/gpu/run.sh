#!/usr/bin/env bash
# One call on a GPU machine (see README.md beside this): the GPU tests, then raypar bench on the GPU at two sizes.
# Usage: OUT=gpu_out bash benchmarks/gpu/run.sh   (DEVICE=cpu: a dry run of the same commands on CPUs)
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-20}
TESTS=${TESTS:-tests/test_gpu.py}              # what pytest runs first ("none": nothing)
BENCHES=${BENCHES:-small wide wide-bf16}      # which of the bench runs below (also: ipc16 ipc48)
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then          # wheels carried to a machine without Ray (README.md)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
unset MLFLOW_TRACKING_URI
nvidia-smi -L 2>/dev/null
python3 -c 'import sys, torch, ray; print(sys.version.split()[0], "torch", torch.__version__, "ray", ray.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
if [ "$DEVICE" = cuda ] && [ "$TESTS" != none ]; then
    timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider --timeout 120 $TESTS 2>&1 | tee "$OUT/test_gpu.log"
fi
bench() {   # bench <name> <args...>
    local name=$1; shift
    case " $BENCHES " in *" $name "*) ;; *) return ;; esac
    echo "=== bench $name: $*"
    timeout "${BENCH_TIMEOUT:-120}" python3 -m raypar.tools.bench --device "$DEVICE" --warmup 5 --steps "$STEPS" \
        --out "$OUT/$name" "$@" 2>&1 | tee "$OUT/$name.log"
}
bench small --subnets 1,2 --contenders original,parareal-1proc,raypar,raypar-no-driver-segment \
    --transports cuda-ipc,object-store
bench wide --subnets 2 --contenders original,parareal-1proc,raypar,raypar-no-driver-segment \
    --transports cuda-ipc,object-store --width-mult 1 --batch 256
bench wide-bf16 --subnets 2 --contenders original,raypar --width-mult 1 --batch 256 --amp bf16 --channels-last
# where CUDA IPC starts to pay on a shared GPU (transport "auto"): VGG-16 x1, N = 2 in 3 processes (0.57 MiB a sample
# at the H200's split [6, 6])
bench ipc16 --subnets 2 --contenders original,raypar-no-driver-segment --transports object-store,cuda-ipc,auto \
    --width-mult 1 --batch 16
bench ipc48 --subnets 2 --contenders original,raypar-no-driver-segment --transports object-store,cuda-ipc,auto \
    --width-mult 1 --batch 48
