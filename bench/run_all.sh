#!/usr/bin/env bash
# Every benchmark, one after the other (they must not share the CPU or GPU), with the arguments
# bench/README.md reports. Prints each script's RESULT line and keeps the full logs in $LOGS.
#   bash bench/run_all.sh [name ...]      # e.g. bash bench/run_all.sh filters neardup
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOGS=${LOGS:-bench/logs}
mkdir -p "$LOGS"
declare -A CMD=(
  [filters]="bench/filters.py --rows 200000 --baseline-rows 20000"
  [neardup]="bench/neardup.py --rows 50000"
  [span_repetition]="bench/span_repetition.py --rows 20000 --workers 2"
  [mt]="bench/mt.py --rows 2000"
  [pack]="bench/pack.py"
  [streaming]="bench/streaming.py"
  [streaming-jsonl]="bench/streaming.py --format jsonl"
  [train_mfu]="bench/train_mfu.py"
  [eval_mc]="bench/eval_mc.py --questions 300"
  [eval_mc-llava]="bench/eval_mc.py --llava --questions 40"
  [engine_overhead]="bench/engine_overhead.py"
  [magpie_rounds]="bench/magpie_rounds.py"
  [translate]="bench/translate.py"
  [report]="bench/report.py --rows 1000000"
)
ORDER=(filters neardup span_repetition mt pack streaming streaming-jsonl train_mfu eval_mc eval_mc-llava
       engine_overhead magpie_rounds translate report)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  log="$LOGS/$name.log"
  start=$(date +%s)
  $PY ${CMD[$name]} > "$log" 2>&1
  rc=$?
  echo "[$name] rc=$rc $(( $(date +%s) - start ))s"
  grep '^RESULT' "$log"
done
