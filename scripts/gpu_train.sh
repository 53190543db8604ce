#!/usr/bin/env bash
# Train culture models on one GPU and bring back what is needed to ship them.
#
#   scripts/gpu_train.sh OUT
#
# Runs from a bare checkout (no install: PYTHONPATH points at the repository) on a machine with
# Python, PyTorch, numpy, safetensors, matplotlib, scipy, click, tqdm and pillow. For each
# PRESET:SECONDS in $RUNS (default "gpu:320 gpu-small:140": about 9.5 minutes in all, within
# one 10-minute command of a 15-minute H200 lease), one after the other so that each
# has the GPU to itself (the time budget is calibrated on the measured step time):
#   0. if BENCH_STEPS > 0, for every preset that many steps without torch.compile: the eager step
#      time beside the compiled one of the run (tokens_per_s and mfu in OUT/bench_PRESET.jsonl);
#   1. `gridlens train --preset PRESET --time-budget SECONDS` (bf16, torch.compile; if the run
#      dies before its first checkpoint, once more without compile);
#   2. `gridlens eval` of the model on a second test seed (--seed 1; the run's own final
#      evaluation uses the held-out pool of seed 0), greedy and sampled, $EVAL_N per task and
#      structure;
#   3. the model folder, log, evaluations and curve packed as OUT/PRESET.tar.gz.partNN
#      (pieces under 15 MiB; `cat OUT/PRESET.tar.gz.part* | tar xz` unpacks).
# Everything printed also goes to OUT/gpu_train.log. Variables: RUNS, EVAL_N (250), DEVICE
# (cuda), PYTHON (python3), WORK (/tmp/gridlens-gpu), EXTRA (more `train` options),
# BENCH_STEPS (0).
set -uo pipefail
out=${1:?usage: scripts/gpu_train.sh OUT}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=${WORK:-/tmp/gridlens-gpu}
runs=${RUNS:-"gpu:320 gpu-small:140"}
bench_steps=${BENCH_STEPS:-0}
eval_n=${EVAL_N:-250}
device=${DEVICE:-cuda}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out" "$work" || exit 2
exec > >(tee -a "$out/gpu_train.log") 2>&1

echo "== $(date -u +%FT%TZ) on $(hostname): $runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available(), "cpus", __import__("os").cpu_count())'

train() {  # preset seconds dir [options]
    local preset=$1 seconds=$2 dir=$3
    shift 3
    rm -rf "$dir"
    # SIGINT at the hard limit: the trainer saves a checkpoint and stops.
    timeout --signal=INT --kill-after=30 $((seconds + 120)) \
        "$py" -m gridlens train --preset "$preset" --out "$dir" --device "$device" \
        --time-budget "$seconds" --no-progress ${EXTRA:-} "$@"
}

for run in $runs; do
    preset=${run%%:*}
    [ "$bench_steps" -gt 0 ] || break
    echo "== $preset: $bench_steps eager steps"
    rm -rf "$work/bench_$preset"
    timeout 120 "$py" -m gridlens train --preset "$preset" --out "$work/bench_$preset" \
        --device "$device" --steps "$bench_steps" --time-budget 0 --no-compile --eval-every 0 \
        --final-eval-n 0 --checkpoint-every 0 --log-every 10 --no-progress ${EXTRA:-} &&
        cp "$work/bench_$preset/log.jsonl" "$out/bench_$preset.jsonl"
done

for run in $runs; do
    preset=${run%%:*}
    seconds=${run##*:}
    dir="$work/$preset"
    began=$(date +%s)
    echo "== $preset: $seconds s of training into $dir"
    train "$preset" "$seconds" "$dir"
    if [ ! -d "$dir/model" ] && ! ls "$dir"/checkpoints/*.pt >/dev/null 2>&1; then
        left=$((seconds - ($(date +%s) - began)))
        echo "== $preset failed before its first checkpoint: again without compile, $left s"
        [ "$left" -gt 60 ] && train "$preset" "$left" "$dir" --no-compile
    fi
    if [ ! -d "$dir/model" ] && ls "$dir"/checkpoints/*.pt >/dev/null 2>&1; then
        echo "== $preset did not finish: exporting its newest checkpoint"
        "$py" -c 'import sys
from gridlens.models import save
from gridlens.training.checkpoint import latest_checkpoint
from gridlens.training.commands import resolve_model
save(resolve_model(str(latest_checkpoint(sys.argv[1])))[0], sys.argv[1] + "/model")' "$dir"
    fi
    [ -d "$dir/model" ] || continue
    echo "== $preset: evaluation on test seed 1"
    # progress bars to a file: the reply of a lent machine carries only the end of the output
    "$py" -m gridlens eval "$dir/model" --seed 1 -n "$eval_n" --device "$device" \
        --json "$dir/eval_seed1.json" 2>"$dir/eval_seed1.err" || tail -5 "$dir/eval_seed1.err"
    echo "== $preset: $(($(date +%s) - began)) s in all"
    (cd "$work" && tar czf - --exclude=checkpoints "$preset") |
        split -b 15m -d - "$out/$preset.tar.gz.part"
done
ls -l "$out"
