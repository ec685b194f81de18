#!/usr/bin/env bash
# MAML-RL on 2-D navigation, the linear feature baseline against the learned (MLP) value
# baseline: the shipped maml-rl-nav2d config, 30 meta-iterations, seeds 0-2, one run at a
# time; then the meta-test of each run (`metalab eval`, 40 tasks, 1 inner step).
# Usage: bash benchmarks/maml_rl_nav2d_baselines.sh OUT_DIR   (from the repository root)
set -euo pipefail
out=${1:?an output directory}
export OMP_NUM_THREADS=1 PYTHONPATH=${SRC:-src}
python=${PYTHON:-python}
for seed in 0 1 2; do
  for baseline in linear mlp; do
    run=$out/$baseline-seed$seed
    nice -n 5 "$python" -m metalab.cli.main train maml-rl-nav2d --out "$run" train.seed=$seed \
      train.steps=30 train.progress=false algorithm.baseline=$baseline
    nice -n 5 "$python" -m metalab.cli.main eval "$run"
  done
done
