#!/usr/bin/env bash
# xmr on one GPU machine: ViT-B-32 indexing images/s (end to end and encoder alone) and the
# re-ranker's latency at K = 16/64/128; writes gpu_bench.json/.md and the log to $OUT (or
# benchmarks/results/gpu).
#
# The device image has torch but not open_clip, faiss, SQLAlchemy, ftfy or platformdirs.
# Fetch their wheels once on a machine with pip access to an index:
#     bash benchmarks/gpu_h100.sh --fetch-wheels          # -> .whl/ (git-ignored)
# then run this script on the GPU machine with `.whl` beside it:
#     bash benchmarks/gpu_h100.sh
# or train xmr-tiny's re-ranker there instead (benchmarks/gpu_reranker_scale.py: a corpus of
# SCENES=40000, the trainer for MINUTES=3 at most, the test split judged at K=16, then
# `xmr bench` at each K in KS; the float16 re-ranker comes back in $OUT/reranker):
#     bash benchmarks/gpu_h100.sh --train-reranker
# Knobs: IMAGES=10000 BATCH=256 WORKERS=(xmr's default) PYTHON=python3; for --train-reranker
# SCENES STEPS MINUTES RR_BATCH EVAL_IMAGES KS WORK DEVICE (DEVICE=cpu RR_BATCH=16: a smoke run)
# and RR_EXTRA, more gpu_reranker_scale.py options: the shipped CPU recipe's binding aids are
#     RR_EXTRA="--image-stem conv --token-alignment --edit-pairs 512"
# Each decoding process builds whole batches, so IMAGES must be many batches per process for
# `xmr index` to reach a steady rate. 10,000 pre-decoded images take ~6 GB.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    # Pure-Python ones first, then the compiled ones for the device's CPython 3.12.
    "$PY" -m pip download --no-deps -d .whl \
        open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth platformdirs
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        faiss-cpu==1.15.1 SQLAlchemy==2.1.9
    ls -l .whl
    exit 0
fi

OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
echo "== xmr GPU benchmark: $(date -u +%FT%TZ) on $(hostname) =="
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" --version

if compgen -G ".whl/*.whl" > /dev/null; then
    echo "== installing carried wheels into /tmp/site =="
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 XMR_NO_RANDOM_WARNING=1 PYTHONUNBUFFERED=1

echo "== checking imports =="
"$PY" - <<'EOF'
import importlib, os, sys
missing = []
for name in ("torch", "torchvision", "open_clip", "faiss", "sqlalchemy", "typer", "platformdirs", "ftfy"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{name} ({exc})")
import torch
if os.environ.get("DEVICE", "cuda") == "cpu":  # a CPU smoke run of this script
    print("  cuda: not asked for (DEVICE=cpu)")
elif not torch.cuda.is_available():
    missing.append("CUDA (torch.cuda.is_available() is False)")
else:
    print(f"  cuda: {torch.cuda.get_device_name(0)}")
if missing:
    print("missing: " + "; ".join(missing), file=sys.stderr)
    print("fetch wheels with `bash benchmarks/gpu_h100.sh --fetch-wheels` and carry .whl",
          file=sys.stderr)
    sys.exit(2)
EOF

set -o pipefail
if [[ "${1:-}" == "--train-reranker" ]]; then
    # xmr's trainer on the GPU (benchmarks/gpu_reranker_scale.py), its float16 re-ranker
    # back in $OUT/reranker, then `xmr bench` with it at each K in KS.
    WORK=${WORK:-/tmp/xmr-rr}
    read -r -a EXTRA <<< "${RR_EXTRA:-}"
    "$PY" benchmarks/gpu_reranker_scale.py --work "$WORK" --out "$OUT" --save "$OUT/reranker" \
        --device "${DEVICE:-cuda}" --scenes "${SCENES:-40000}" --test-images "${EVAL_IMAGES:-10000}" \
        --steps "${STEPS:-3000}" --minutes "${MINUTES:-3}" --batch-size "${RR_BATCH:-512}" \
        ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 | tee "$OUT/train_reranker.log"
    for k in ${KS:-16 128}; do
        echo "== bench K=$k: $(date -u +%T) =="
        "$PY" -m xmr.cli.main bench "$WORK/eval-${EVAL_IMAGES:-10000}-1234/captions.json" \
            --model xmr-tiny --reranker "$OUT/reranker" --candidates "$k" --device "${DEVICE:-cuda}" \
            --json "$OUT/bench_k$k.json" --report "$OUT/bench_k$k.md" 2>&1 | tee "$OUT/bench_k$k.log"
    done
    ls -l "$OUT" "$OUT/reranker"
    exit 0
fi
echo "== benchmark =="
"$PY" benchmarks/gpu_bench.py --out "$OUT" --images "${IMAGES:-10000}" \
    --batch-size "${BATCH:-256}" ${WORKERS:+--workers "$WORKERS"} 2>&1 | tee "$OUT/gpu_bench.log"
echo "== done: $OUT =="
ls -l "$OUT"
