#!/usr/bin/env bash
# Rehearse the device check here, on CPU, with the GPU image's versions: torch 2.11 (its CUDA build,
# as there), transformers 5.17, lightning 2.6.6, and none of jsonargparse, bitsandbytes or datasets but
# the copies prepare.sh put in .whl/. What would break only there breaks here, at no device time
# (transformers 5.17's static cache and RoPE under autocast did, 2026-11-30). Python is this machine's
# (the image has 3.12).
#
#   bash tools/gpu/prepare.sh && bash tools/gpu/rehearse.sh
#
# The first run builds .venv-image (about 3 GB of downloads, 6 GB of disk); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-image
if [ ! -d .whl/site ]; then
    echo "rehearse: .whl/site is missing; run bash tools/gpu/prepare.sh first" >&2
    exit 2
fi
if [ ! -f "$VENV/complete" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # The packages of the image that nla or its tests import, pandas and the rest of datasets' needs
    # included; the pins are the image's versions.
    "$VENV/bin/python" -m pip install -q --no-cache-dir torch==2.11.0 transformers==5.17.0 lightning==2.6.6 \
        peft accelerate torchmetrics tensorboard safetensors tokenizers rich numpy pyyaml pyarrow pandas requests \
        tqdm xxhash fsspec huggingface-hub httpx pytest pytest-timeout
    touch "$VENV/complete"
fi
export PATH="$PWD/$VENV/bin:$PATH"
status=0
bash tools/gpu/check.sh --device cpu || status=1
# The bf16-mixed SFT and GRPO steps through the CLI, as on the GPU (their CPU twins; the CUDA ones skip).
PYTHONPATH="$PWD/.whl/site:$PWD" HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider -rs \
    tests/modules/test_gpu_training.py || status=1
exit $status
