"""A local transformers chat model as the teacher: batched, left-padded generation on one device."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nla.data.teachers.base import Summary, Teacher, TeacherArgs, TeacherRequest, parse_features, render_instruction
from nla.core.errors import ConfigError


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError("teacher.device", f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from error


class HFTeacher(Teacher):
    """Renders each request with the model's own chat template and samples an answer."""

    name = "hf"

    def __init__(self, args: TeacherArgs) -> None:
        self.args = args
        self.model = args.model
        self.device = _device(args.device)
        use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model)
            lm = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if use_bf16 else torch.float32)
        except (OSError, ValueError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ConfigError("teacher.model", f"cannot load '{args.model}' ({first_line})") from error
        if not tokenizer.chat_template:
            raise ConfigError("teacher.model", f"'{args.model}' has no chat template; use an instruction-tuned model")
        # Left padding keeps every prompt's last token at the end of the row, where generation continues.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.lm = lm.to(self.device).eval()
        self.generation_config = copy.deepcopy(lm.generation_config)
        self.generation_config.update(max_new_tokens=args.max_tokens, pad_token_id=tokenizer.pad_token_id)
        if args.temperature > 0:
            # Plain tempered sampling: a checkpoint's default top-k / top-p would silently narrow it,
            # and generate() refills unset (None) fields from those defaults, so set neutral values.
            self.generation_config.update(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0)
        else:
            self.generation_config.update(do_sample=False)

    def prompt(self, request: TeacherRequest) -> str:
        """The rendered chat prompt (special tokens included, so encode it with ``add_special_tokens=False``)."""
        return self.chat_prompt(render_instruction(request, self.instruction))

    def chat_prompt(self, message: str) -> str:
        """``message`` as the single user turn of the model's chat template, ready for the answer."""
        messages = [{"role": "user", "content": message}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[TeacherRequest]) -> list[str]:
        """Raw answer texts for one batch of requests, in request order."""
        return self.generate_texts([render_instruction(request, self.instruction) for request in requests])

    @torch.inference_mode()
    def generate_texts(self, messages: Sequence[str]) -> list[str]:
        """Raw answer texts for one batch of user messages, in order."""
        batch = self.tokenizer(
            [self.chat_prompt(message) for message in messages],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(self.device)
        output = self.lm.generate(**batch, generation_config=self.generation_config)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def answer(self, messages: Sequence[str]) -> list[str | None]:
        size = self.args.batch_size
        chunks = (self.generate_texts(messages[start : start + size]) for start in range(0, len(messages), size))
        return [text for chunk in chunks for text in chunk]

    def stream(self, requests: Sequence[TeacherRequest]) -> Iterator[tuple[int, Summary | None]]:
        # Batching prompts of similar length wastes less compute on padding.
        order = sorted(range(len(requests)), key=lambda index: len(requests[index].context))
        size = self.args.batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for index, text in zip(chunk, self.generate([requests[i] for i in chunk])):
                yield index, Summary(parse_features(text))
