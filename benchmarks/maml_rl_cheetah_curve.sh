#!/usr/bin/env bash
# A meta-RL learning curve on half-cheetah velocity for one seed: train CONFIG (default
# `maml-rl-cheetah-vel`; also `pearl-cheetah-vel`, `rl2-cheetah-vel`) in segments of SEGMENT
# trainer steps (a resumed run is bit-identical to an uninterrupted one) and meta-test after
# each (`metalab eval`: 20 held-out velocities; MAML-RL: the return before and after one
# inner step, PEARL and RL²: the return of each episode), until STOP_AT (UTC, HH:MM) or
# MAX_STEPS.
#
#   OMP_NUM_THREADS=1 nohup nice -n 5 bash benchmarks/maml_rl_cheetah_curve.sh RUN_DIR SEED \
#       [SEGMENT=10] [MAX_STEPS=500] [STOP_AT=02:05] > RUN_DIR.log 2>&1 &
#   CONFIG=pearl-cheetah-vel ... bash benchmarks/maml_rl_cheetah_curve.sh RUN_DIR SEED 2000 8000
#
# Each meta-test is copied to RUN_DIR/eval-step<K>.json; benchmarks/maml_rl_cheetah_curve.py
# tabulates them over seeds (benchmarks/meta_rl_cheetah_curve.py for PEARL and RL²).
set -euo pipefail
run_dir=$1 seed=$2 segment=${3:-10} max_steps=${4:-500} stop_at=${5:-02:05}
metalab=("${PYTHON:-python}" -m metalab.cli.main)
step=0
while (( step < max_steps )); do
    step=$(( step + segment ))
    [[ -f "$run_dir/eval-step$step.json" ]] && continue  # done before: rerun to extend
    if [[ -f "$run_dir/checkpoint.pt" ]]; then
        "${metalab[@]}" train --resume "$run_dir" "train.steps=$step"
    else
        "${metalab[@]}" train "${CONFIG:-maml-rl-cheetah-vel}" --out "$run_dir" "train.seed=$seed" \
            "train.steps=$step" train.progress=false
    fi
    "${metalab[@]}" eval "$run_dir"
    cp "$run_dir/eval.json" "$run_dir/eval-step$step.json"
    [[ "$(date -u +%H:%M)" < "$stop_at" ]] || break
done
