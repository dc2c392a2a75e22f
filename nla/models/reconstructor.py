"""The activation reconstructor (AR): text in, the layer-K activation of the target model out.

It is the target's first K+1 blocks with the final norm removed, read at the last real token, followed
by a ``d x d`` linear head that starts as the identity. At initialisation the AR therefore returns the
target's own layer-K residual of its input, and training only has to learn the difference.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel

from nla.core.errors import ConfigError, NLAError
from nla.core.maths import normalized_mse
from nla.models.sidecar import SIDECAR_FILENAME, Sidecar, read_sidecar, write_sidecar
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_config
from nla.models.packing import PackLayout, attention_kwargs, check_packed, pack, use_packing

VALUE_HEAD_FILENAME = "value_head.safetensors"


def last_real_token(attention_mask: Tensor) -> Tensor:
    """Index of the last position with mask 1 in each row, for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values
    if bool((last < 0).any()):
        raise ValueError("every row needs at least one real token (found an all-padding row)")
    return last


class Reconstructor(nn.Module):
    """Truncated target model plus an fp32 ``Linear(d, d, bias=False)`` head initialised to the identity.

    ``model`` must be a causal LM holding exactly ``layer + 1`` blocks (``from_target`` loads one).
    Its final norm is replaced by ``nn.Identity`` and its LM head dropped: the AR predicts a residual,
    which the target never normalises, and never needs logits.
    """

    def __init__(
        self, model: PreTrainedModel, layer: int, head_weight: Tensor | None = None, packed: bool | str = "auto"
    ) -> None:
        super().__init__()
        # ``auto`` packs exactly when the model's attention has a variable-length kernel (skips padding).
        self.packed = check_packed(packed, "reconstructor.packed")
        blocks = adapters.num_layers(model.config)
        if blocks != layer + 1 or len(adapters.decoder_layers(model)) != layer + 1:
            raise ConfigError("model.layer", f"the AR for layer {layer} needs {layer + 1} blocks, got {blocks}")
        adapters.replace_final_norm(model, nn.Identity())
        # With untied embeddings this frees a vocab x d matrix; with tied ones it only drops a reference.
        model.set_output_embeddings(nn.Identity())
        self.model, self.layer = model, layer
        d = adapters.hidden_size(model.config)
        self.head = nn.Linear(d, d, bias=False, dtype=torch.float32, device=model.device)
        with torch.no_grad():
            if head_weight is None:
                # Default init shrinks norms by about 1/sqrt(3) (step-0 loss 1.94 vs 1.61 with identity).
                nn.init.eye_(self.head.weight)
            else:
                if tuple(head_weight.shape) != (d, d):
                    raise NLAError(f"{VALUE_HEAD_FILENAME}: weight has shape {tuple(head_weight.shape)}, "
                                   f"expected ({d}, {d})")
                self.head.weight.copy_(head_weight.float())

    @classmethod
    def from_target(cls, args: ModelArgs, layer: int) -> Reconstructor:
        """The AR for ``layer`` of the target ``args`` names, loading only its first ``layer + 1`` blocks."""
        config = load_config(args)
        adapters.check_layer(config, layer)
        return cls(load_causal_lm(args, keep_layers=layer + 1, config=config), layer)

    @property
    def d_model(self) -> int:
        return self.head.in_features

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Whole-module casts (``.to(torch.bfloat16)``, bf16 precision plugins) must not reach the head:
        # near 1, bf16 steps are 2**-8 apart, so a small-LR update to the identity rounds back to 1.
        self.head.weight.data = self.head.weight.data.float()
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor, last_index: Tensor | None = None,
                layout: PackLayout | None = None) -> Tensor:
        """Predicted activation ``[B, d]`` in float32, read at each row's last real token.
        ``last_index`` (that token's position per row) and ``layout`` (``packing.pack_layout`` of the
        mask) come from the collate step; given, the forward does not wait for the device to find them."""
        if use_packing(self.packed, self.model):
            return self._forward_packed(input_ids, attention_mask, layout)
        last = last_real_token(attention_mask) if last_index is None else last_index.to(input_ids.device)
        # Positions from the mask, not the sequence index: several families count from the left edge,
        # which would shift every position of a left-padded row.
        position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)
        hidden = adapters.decoder(self.model)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self._head(hidden[rows, last])

    def _forward_packed(self, input_ids: Tensor, attention_mask: Tensor, layout: PackLayout | None) -> Tensor:
        """The same prediction from all rows packed into one padding-free row; positions restart per row."""
        packed = pack(input_ids, attention_mask, layout=layout)
        kwargs = attention_kwargs(packed, self.model.config, self.model.dtype)
        hidden = adapters.decoder(self.model)(input_ids=packed.input_ids, use_cache=False, **kwargs).last_hidden_state
        return self._head(hidden[0, packed.last])

    def _head(self, hidden: Tensor) -> Tensor:
        # Outside autocast: under bf16-mixed the fp32 head would otherwise multiply in bf16.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float())

    @staticmethod
    def loss(pred: Tensor, target: Tensor) -> Tensor:
        """Mean over the batch of the MSE at norm sqrt(d), which equals 2(1 - cos(pred, target))."""
        return normalized_mse(pred, target).mean()

    def save_pretrained(self, directory: str | Path, meta: Sidecar | None = None, tokenizer=None) -> Path:
        """Write the released AR layout: truncated HF model (config with K+1 blocks), the head as
        ``value_head.safetensors`` (key ``weight``, [d, d]), the tokenizer right-padded, the sidecar.
        The final norm and LM head are not saved: the AR never uses them."""
        if meta is not None and (meta.role != "ar" or meta.extraction_layer_index != self.layer):
            raise ConfigError("meta", f"describes role {meta.role!r} at layer {meta.extraction_layer_index}; "
                              f"this is the AR for layer {self.layer}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        save_file({"weight": self.head.weight.detach().float().cpu().contiguous()},
                  str(directory / VALUE_HEAD_FILENAME))
        if tokenizer is not None:
            # The released loaders read the prediction at the last position, which right padding keeps real.
            tokenizer = copy.deepcopy(tokenizer)
            tokenizer.padding_side = "right"
            tokenizer.save_pretrained(directory)
        if meta is not None:
            write_sidecar(meta, directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, dtype: str = "auto", attn_implementation: str = "auto"
    ) -> Reconstructor:
        """Load an AR directory, ours or a released one. K comes from ``nla_meta.yaml`` when present,
        else from the config (its block count - 1)."""
        directory = Path(directory)
        args = ModelArgs(str(directory), dtype=dtype, attn_implementation=attn_implementation)
        config = load_config(args)
        if (directory / SIDECAR_FILENAME).is_file():
            meta = read_sidecar(directory)
            if meta.role != "ar":
                raise ConfigError("role", f"is {meta.role!r} in {directory / SIDECAR_FILENAME}; expected ar")
            layer = adapters.check_layer(config, meta.extraction_layer_index, "extraction_layer_index")
        else:
            layer = adapters.num_layers(config) - 1
        head_file = directory / VALUE_HEAD_FILENAME
        if not head_file.is_file():
            raise NLAError(f"{VALUE_HEAD_FILENAME}: not found in {directory}; an AR directory needs its head")
        tensors = load_file(str(head_file))
        if "weight" not in tensors:
            raise NLAError(f"{VALUE_HEAD_FILENAME}: no tensor named 'weight' in {head_file}")
        # The AR layout saves neither the final norm nor the LM head (it uses neither).
        model = load_causal_lm(args, keep_layers=layer + 1, config=config, without_head=True)
        return cls(model, layer, tensors["weight"])
