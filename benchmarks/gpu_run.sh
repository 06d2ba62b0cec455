#!/usr/bin/env bash
# The one script a lent GPU machine runs, from the repository root: the CUDA tests on the real
# device, then the dense sweep with the CUDA providers. Everything lands under $OUT:
#   nvidia-smi.txt, cuda-tests.txt, dense-cuda.md (the tables), dense-cuda.json, dense-cuda.log
#
# The lent image's own numpy breaks numba-cuda at the first kernel compile, so a numpy 2.4 wheel
# for its Python travels with the tree in .whl/ (prepared once, here, with network access):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl numpy==2.4.6
# and the run carries it:  carry .whl, command `bash benchmarks/gpu_run.sh`.
#
# DEVICES (default "cuda") picks the sweep's devices; "cpu,cuda" adds the CPU providers.
# Each step has its own time limit, so that a hung step still leaves the others' results.
set -uo pipefail

: "${OUT:?OUT must name the folder whose files come back}"
DEVICES=${DEVICES:-cuda}

if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "no numpy wheel in .whl/: see the header of $0" | tee "$OUT/error.txt"
  exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl \
  && export PYTHONPATH=$PWD/.site:$PWD || exit 1
unset NUMBA_ENABLE_CUDASIM

status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, numba, numpy; from numba import cuda; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); \
print('numba', numba.__version__, 'numpy', numpy.__version__, 'numba.cuda', cuda.is_available())" \
  >> "$OUT/nvidia-smi.txt" 2>&1 || status=1

timeout 240 python3 -m pytest -q -m cuda -p no:cacheprovider > "$OUT/cuda-tests.txt" 2>&1 || status=1
tail -n 3 "$OUT/cuda-tests.txt"

timeout 300 python3 -m benchmarks dense --devices "$DEVICES" --no-refimpl \
  --json "$OUT/dense-cuda.json" > "$OUT/dense-cuda.md" 2> "$OUT/dense-cuda.log" || status=1
grep -A 20 '^## Targets' "$OUT/dense-cuda.md"

exit $status
