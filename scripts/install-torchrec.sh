#!/usr/bin/env bash
# Install TorchRec 1.8.0 beside recspec, into the active Python environment, as a comparison
# target for `python -m conformance --against torchrec`, interop tests and `python -m benchmarks`.
# recspec never needs it.
#
# Why a script: torchrec==1.8.0 depends on `fbgemm-gpu` (the multi-GB CUDA build), which pip
# cannot be told to skip inside an extra. On a CPU machine the CPU build of FBGEMM goes in
# first and TorchRec goes in without dependencies; its remaining runtime dependencies follow.
# fbgemm-gpu-cpu is bound to one torch ABI: 1.8.0 loads on torch 2.13.0 (1.9.0 does not).
#
# Usage:  . .venv/bin/activate && bash scripts/install-torchrec.sh
set -euo pipefail

PYTHON=${PYTHON:-python}

echo "Installing into: $("$PYTHON" -c 'import sys; print(sys.prefix)')"
"$PYTHON" -m pip install "torch==2.13.0" "fbgemm-gpu-cpu==1.8.0"
"$PYTHON" -m pip install --no-deps "torchrec==1.8.0"
"$PYTHON" -m pip install tensordict "torchmetrics==1.0.3" tqdm pyre-extensions

cat <<'MSG'

TorchRec 1.8.0 is installed. Verify with:

    python -c "import torchrec; from torchrec.modules.crossnet import CrossNet; print(torchrec.__version__)"

Then, for example:

    python -m conformance --against torchrec
    python -m benchmarks dense --quick
MSG
