"""The neural models and their loading: the target and its residual stream, the verbalizer (AV) and
the reconstructor (AR), the ``Pair`` they form, and the files a pair is exported to and loaded from.

Loading (``loading``, ``packaged``, ``base_model``) and the per-family table (``adapters``); the
target (``target``, ``residual``, ``patching``); the AV (``verbalizer``, ``injection``, ``sampling``,
``logprobs``) and the AR (``reconstructor``); attention and batch layout (``packing``, ``varlen``),
LoRA (``lora``); the pair (``pair``), its sidecar (``sidecar``) and model card (``card``); the layouts
published pairs come in (``released``), all read by ``pair_loading``.
Imports only ``nla.core``.
"""
