"""The layouts published NLAs come in, beyond our own export, and how each is read.

``nla.models.pair_loading.load_pair`` reads all of them; the files it looks for decide the layout,
side by side (as we read them from the public model cards; a file that differs from what is
described in ``docs/checkpoint-format.md`` is a one-line error naming it):

1. Reference release (Qwen2.5-7B L20, Gemma-3-12B L32, Gemma-3-27B L41, Llama-3.3-70B L53): full HF
   directories, the AR truncated to K + 1 blocks with ``value_head.safetensors``; read as our export.
2. EasyNLA-style (Qwen3-8B L24): the AV a PEFT adapter stacked on an AV-SFT warm-start adapter (the
   sidecar's ``warm_start_adapter``, merged into the base first, ``av``), injection added after
   block 1 at the residual's norm (``nla.models.injection``); the AR a full-depth model plus
   ``value_head.safetensors``, truncated to K + 1 blocks when it loads.
3. Truncated-base LoRA AR (DeepSeek-V4-Flash): ``ar_meta.json`` + ``ar_lora_value_head.safetensors``
   over the base's first K + 1 blocks (``ar_lora``).
4. Per-layer heads (Phi-4, Qwen3-4B): PEFT adapters, ``value_heads.safetensors`` with one head per
   layer, the layer named in the prompts (``per_layer``); the layer is chosen when the pair loads.

A base model an adapter names by a path on its trainer's disk is replaced by ``base`` (``--base``).
"""
