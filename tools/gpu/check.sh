#!/usr/bin/env bash
# One device call, at most 9 minutes on one H200: the gpu-marked tests, then the measurements of
# tools/gpu/check.py, each step capped by `timeout` so one failure or hang cannot eat the budget.
# Results: $OUT/results.jsonl (one JSON line per measurement), $OUT/results.md, $OUT/check.log.
#
#   here:        bash tools/gpu/prepare.sh
#   device tool: run(command="bash tools/gpu/check.sh", carry=[".whl"], timeout_s=600)
#   dry run:     bash tools/gpu/check.sh --device cpu      (tiny shapes, seconds; part of the test suite)
#   rehearsal:   bash tools/gpu/rehearse.sh                (the dry run with the image's package versions)
set -uo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE="${2:?--device needs a value}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
LOG="$OUT/check.log"
: >"$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The carried wheels (prepare.sh) go first on the path; nothing here downloads.
[ -d .whl/site ] && export PYTHONPATH="$PWD/.whl/site:$PYTHONPATH"
if [ -f .whl/qwen2.5-tokenizer.tar.gz ]; then
    mkdir -p /tmp/nla-gpu && tar -xzf .whl/qwen2.5-tokenizer.tar.gz -C /tmp/nla-gpu
fi
failed=0

step() {  # step SECONDS NAME COMMAND...: run one capped step, log it, never abort the script
    local limit=$1 name=$2
    shift 2
    local began=$SECONDS
    echo "== $name (cap ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - began))s" | tee -a "$LOG"
    [ $status -eq 0 ] || { failed=$((failed + 1)); tail -n 15 "$LOG" | grep -v '^== '; }
}

# python3: on the image the plain python3 is the one that holds PyTorch.
CHECK=(python3 tools/gpu/check.py --device "$DEVICE" --out "$RESULTS")
# The files holding gpu-marked tests (collecting all of tests/ would import packages the image lacks).
GPU_TESTS=$(grep -rl --include='test_*.py' -e 'mark.gpu' tests)

if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
        | tee -a "$LOG"
fi
# On CPU the gpu-marked tests skip, which still shows that they import with only the carried packages.
step 120 gpu-tests python3 -m pytest -q -m gpu -p no:cacheprovider -rs $GPU_TESTS

if [ "$DEVICE" = cpu ]; then
    TINY=(--shape tiny --prompts 2 --group 2 --tokens 5 --micro 2 --explanation-tokens 24 --repeats 1)
    step 120 sampler "${CHECK[@]}" sampler "${TINY[@]}" --loop
    step 120 sft "${CHECK[@]}" sft "${TINY[@]}"
    step 120 grpo "${CHECK[@]}" grpo "${TINY[@]}"
    # The 7B steps' settings: 8-bit AdamW (bitsandbytes from .whl there), LoRA on both models for GRPO.
    step 120 sft-8bit "${CHECK[@]}" sft "${TINY[@]}" --optimizer adamw8bit
    step 120 grpo-8bit "${CHECK[@]}" grpo "${TINY[@]}" --optimizer adamw8bit --lora 4
    step 120 varlen "${CHECK[@]}" varlen "${TINY[@]}"
else
    step 75 sampler-0.5b "${CHECK[@]}" sampler --shape qwen2.5-0.5b --prompts 64 --group 8 --tokens 150
    step 40 decode-7b "${CHECK[@]}" sampler --shape qwen2.5-7b --prompts 8 --group 8 --tokens 64 --no-hf
    step 40 decode-llama-8b "${CHECK[@]}" sampler --shape llama-3.1-8b --prompts 8 --group 8 --tokens 64 --no-hf
    step 35 sft-0.5b "${CHECK[@]}" sft --shape qwen2.5-0.5b --micro 16
    step 60 sft-7b "${CHECK[@]}" sft --shape qwen2.5-7b --micro 8 --optimizer adamw8bit
    step 60 grpo-0.5b "${CHECK[@]}" grpo --shape qwen2.5-0.5b --prompts 64 --group 8 --micro 16 --repeats 1
    # One GPU cannot train both 7B models in full with float32 masters (nla plan: 156 GiB with 8-bit
    # AdamW; bf16 weights train only with adamw_bf16_stochastic, whose float32 moments cost more): a user
    # runs them with LoRA, 70 GiB.
    step 60 grpo-7b "${CHECK[@]}" grpo --shape qwen2.5-7b --prompts 16 --group 8 --micro 8 --repeats 1 \
        --optimizer adamw8bit --lora 16
    step 30 varlen-0.5b "${CHECK[@]}" varlen --shape qwen2.5-0.5b --micro 16
fi
python3 tools/gpu/check.py report --out "$RESULTS" --markdown "$OUT/results.md" >>"$LOG" 2>&1
echo "check: $(wc -l <"$RESULTS") measurements, $failed failed step(s); $OUT/results.md"
exit $((failed > 0))
