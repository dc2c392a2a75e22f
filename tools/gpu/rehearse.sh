#!/usr/bin/env bash
# Rehearse the device check here, on CPU, with the GPU image's versions: torch 2.11 (its CUDA build,
# as there), transformers 5.17, lightning 2.6.6, and none of jsonargparse, bitsandbytes or datasets but
# the copies prepare.sh put in .whl/. What would break only there breaks here, at no device time
# (transformers 5.17's static cache and RoPE under autocast did, 2026-11-30). Python is this machine's
# (the image has 3.12.3, and numpy 2.5, which needs it).
#
#   bash tools/gpu/prepare.sh && bash tools/gpu/rehearse.sh
#
# The first run builds .venv-image (about 3 GB of downloads, 6 GB of disk); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-image
# The image's packages that nla or its tests import (datasets' own needs included), at the versions
# the device's `pip list` showed (2026-11).
IMAGE=(torch==2.11.0 transformers==5.17.0 lightning==2.6.6 tokenizers==0.23.2 huggingface-hub==1.33.0
       safetensors==0.8.0 torchmetrics==1.9.0 accelerate==1.15.0 peft tensorboard rich numpy pyyaml pyarrow
       pandas requests tqdm xxhash fsspec httpx pytest pytest-timeout)
if [ ! -d .whl/site ]; then
    echo "rehearse: .whl/site is missing; run bash tools/gpu/prepare.sh first" >&2
    exit 2
fi
if [ "$(cat "$VENV/installed" 2>/dev/null)" != "${IMAGE[*]}" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --no-cache-dir "${IMAGE[@]}"
    echo "${IMAGE[*]}" >"$VENV/installed"
fi
export PATH="$PWD/$VENV/bin:$PATH"
status=0
bash tools/gpu/check.sh --device cpu || status=1
# The bf16-mixed SFT and GRPO steps through the CLI, as on the GPU (their CPU twins; the CUDA ones skip).
PYTHONPATH="$PWD/.whl/site:$PWD" HF_HUB_OFFLINE=1 python3 -m pytest -q -p no:cacheprovider -rs \
    tests/modules/test_gpu_training.py || status=1
exit $status
