#!/usr/bin/env bash
# The test suite as another machine would run it: other CPU kernels and another sampling seed.
#
#   bash scripts/test-elsewhere.sh                 # AVX2 kernels, seed 1, the whole suite
#   PIPE_TEST_SEED=7 bash scripts/test-elsewhere.sh -m slow
#   ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE bash scripts/test-elsewhere.sh
#
# Why: a batch of another size, another CPU (AMX, AVX-512, AVX2) or another seed changes what the embedded
# model samples. A test that holds only for what it sampled on the machine that wrote it lands green in CI
# (which runs there) and fails for the next person. Whatever fails here and passes with the plain
# `pytest -q` depends on this machine's samples: make it assert what holds for any sample.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2}
export ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}
export PIPE_TEST_SEED=${PIPE_TEST_SEED:-1}
echo "test-elsewhere: ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA=$ONEDNN_MAX_CPU_ISA PIPE_TEST_SEED=$PIPE_TEST_SEED"
exec "${PIPE_VENV:-.venv}/bin/python" -m pytest -q "$@"
