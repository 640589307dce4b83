#!/usr/bin/env bash
# The GPU session in one script: the CUDA path of the tests, the CLI end to end on CUDA, then the
# benchmarks with --device cuda. Each step has its own time limit and log in OUT; a step that fails
# does not stop the next. Figures go to docs/benchmarks.md by hand.
#
# Usage: bash benchmarks/cuda.sh OUT [STEPS]     (STEPS: a comma list of step names; default all)
#        DEVICE=cpu SMALL=1 bash benchmarks/cuda.sh /tmp/dry   (a dry run of the script itself)
# On the lent GPU machine the packages its image lacks travel as wheels in .whl/ (see
# /work/.library/device/README.md); they are installed to /tmp/site first when present.
set -u
OUT=${1:?usage: bash benchmarks/cuda.sh OUT [STEPS]}
STEPS=${2:-tests,demo,harden,rotate,attack-demo,models,attack-resnet,attack-adv,corrupt,scale}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
DEADLINE=${DEADLINE:-100000}  # seconds: no step runs past it (each step's limit is cut to what is left)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -d .whl ] && [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; tail -5 "$OUT/pip.log"; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  want "$name" || return 0
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt 15 ] && { echo "=== $name: skipped, ${left}s left before the deadline"; return 0; }
  [ "$left" -lt "$limit" ] && limit=$left
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-30}" "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  $PY -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1

N=540; NB=540; EP=3; RGB=24; SCALES=2,8,32
[ "$SMALL" = 1 ] && { N=60; NB=20; EP=1; RGB=2; SCALES=1; }
DEMO=${DEMO:-reports/cuda-demo}
NORM=${NORM:-linf}

AUDITKIT_CUDA_REPORT=$OUT/cuda-vs-cpu.txt step tests 240 $PY -m pytest -p no:cacheprovider -o addopts="" -q -W ignore::DeprecationWarning \
  tests/test_cuda.py "tests/test_square.py::test_runs_on_cuda" tests/test_engine.py
step demo 240 $PY -m auditkit demo --device "$DEVICE" --out "$DEMO" --no-progress
[ -f "$DEMO/results.json" ] && want demo && cp "$DEMO/results.json" "$OUT/demo-results.json"
step harden 150 $PY -m auditkit harden "$DEMO/model/model.safetensors" "$DEMO/data/train.csv" \
  --eval-data "$DEMO/data/test.csv" --device "$DEVICE" --epochs "$EP" --method pgd --eps 0.1 \
  --epsilons 0,0.05,0.1 --angles=-30:30:30 --no-progress --out "$OUT/harden"
step rotate 90 bash -c "$PY benchmarks/rotate.py --device $DEVICE --n $N --repeats 5 && \
  $PY benchmarks/rotate.py --device $DEVICE --model resnet18 --n $N --repeats 5"
step attack-demo 240 $PY benchmarks/attack.py --model-dir "$DEMO" --device "$DEVICE" --n "$NB" --threads 0 --repeats 3
step models 180 $PY benchmarks/models.py --demo-dir "$DEMO" --out reports/cuda-bench --threads 0
step attack-resnet 300 $PY benchmarks/attack.py --model-dir reports/cuda-bench/resnet18 --device "$DEVICE" \
  --n "$NB" --norm "$NORM" --threads 0 --repeats 3
step attack-adv 300 $PY benchmarks/attack.py --model-dir reports/cuda-bench/adv-cnn --device "$DEVICE" \
  --n "$NB" --norm "$NORM" --threads 0 --repeats 3
step corrupt 150 $PY benchmarks/corrupt.py --model-dir "$DEMO" --device "$DEVICE" --n "$N" --rgb-n "$RGB" --threads 0 \
  --repeats 1
step scale 150 $PY benchmarks/scale.py --device "$DEVICE" --model-dir "$DEMO" --scales "$SCALES" --stream on
echo "=== done in $SECONDS s"
