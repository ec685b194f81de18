#!/usr/bin/env bash
# Extend the three PEARL cheetah-vel seeds (/tmp/pearl/runs/seed{0,1,2}) in rounds of 8000 trainer
# steps: every seed reaches a round's step before the next round starts. A round starts only if
# the previous round's wall time (x1.1) fits before DEADLINE (UTC epoch seconds).
cd /work/wt-pearl
deadline=$(date -u -d "today 17:40" +%s)
last=0
for target in 40000 48000 56000 64000 72000 80000 88000 96000; do
  now=$(date +%s)
  if (( last > 0 && now + last * 11 / 10 > deadline )); then
    echo "stop before $target: round takes ~${last}s, $(( deadline - now ))s left $(date -u +%H:%M:%S)"; break
  fi
  r0=$(date +%s)
  for seed in 0 1 2; do
    t0=$(date +%s)
    CONFIG=pearl-cheetah-vel PYTHON=/work/main/.venv/bin/python PYTHONPATH=src \
      bash benchmarks/maml_rl_cheetah_curve.sh /tmp/pearl/runs/seed$seed $seed 8000 $target 23:59
    echo "seed $seed target $target wall_s=$(( $(date +%s)-t0 )) done $(date -u +%H:%M:%S)"
  done
  last=$(( $(date +%s) - r0 ))
  echo "round $target wall_s=$last"
done
