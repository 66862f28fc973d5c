#!/usr/bin/env bash
# bitsandbytes quantization on CUDA (issue #15): tests/deploy/test_quantize_bnb.py and
# benchmarks/bnb_bench.py on a lent GPU machine, whose image has torch, transformers and
# accelerate but not bitsandbytes or lmops' store dependencies, and reaches no registry.
#
# 1. Here, where pip reaches PyPI, once:
#      bash benchmarks/gpu_quant_check.sh prepare
#    unpacks, for the GPU image's Python 3.12, the packages below into .gpu-site/ (ignored
#    through .git/info/exclude; ~25 MB: bitsandbytes keeps its CUDA 13 and CPU libraries).
# 2. On the GPU (the device tool's run, carry [".gpu-site"], timeout_s 480):
#      bash benchmarks/gpu_quant_check.sh
#    runs the bnb tests on cuda (and the int8-folder-is-CPU-only test), then the bench on
#    cuda with --random-init: SmolLM2-135M's shapes with random weights, so sizes and
#    tokens/s are the real model's; perplexity needs the 98 MB GGUF, more than the 64 MiB
#    a call carries (to measure it, carry the GGUF in two parts over two calls into
#    .gpu-site/ and run the bench with SMOLLM2_GGUF=... and no --random-init).
#    Logs and the bench's JSON land in $OUT (or ./gpu-out).
# PY, DEVICE and SITE override the interpreter, device and package folder (PY=.venv/bin/python
# DEVICE=cpu SITE=none runs step 2 here as a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."

SITE=${SITE:-.gpu-site}
PKGS=(bitsandbytes sqlalchemy alembic mako pydantic pydantic-core annotated-types
  typing-inspection gguf)

if [[ "${1:-}" == "prepare" ]]; then
  VENV_PY=${VENV_PY:-.venv/bin/python}
  excl=$(git rev-parse --git-path info/exclude)
  grep -qx "/$SITE/" "$excl" 2>/dev/null || echo "/$SITE/" >>"$excl"
  rm -rf "$SITE" && mkdir -p "$SITE/.wheels"
  pins=()
  for p in "${PKGS[@]}"; do  # the versions this checkout's venv runs
    pins+=("$p==$("$VENV_PY" -c "import importlib.metadata as m; print(m.version('$p'))")")
  done
  plats=()
  for t in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
    plats+=(--platform "${t}_x86_64")
  done
  "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${plats[@]}" -d "$SITE/.wheels" "${pins[@]}"
  for w in "$SITE"/.wheels/*.whl; do
    "$VENV_PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
      "$w" "$SITE"
  done
  rm -rf "$SITE/.wheels"
  find "$SITE/bitsandbytes" -name 'libbitsandbytes_*.so' \
    ! -name '*_cpu.so' ! -name '*_cuda13*.so' -delete
  du -sh "$SITE"
  exit 0
fi

PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/$SITE:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
[[ "$DEVICE" == cuda ]] && nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers, bitsandbytes as b; print('torch', torch.__version__,
  'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'bnb',
  b.__version__)" | tee "$OUT/versions.txt"
rc=0
"$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_quantize_bnb.py \
  tests/deploy/test_quantize.py::test_int8_folder_is_cpu_only 2>&1 | tee "$OUT/tests.log" ||
  rc=1
"$PY" benchmarks/bnb_bench.py --device "$DEVICE" --random-init --methods bnb-nf4 bnb-int8 \
  --gen-tokens 128 --rounds 3 --json >"$OUT/bnb_bench.json" 2>"$OUT/bnb_bench.err" || rc=1
cat "$OUT/bnb_bench.json"
exit "$rc"
