"""``NLAFSDPStrategy``: FSDP2 (``fully_shard``) over the AV, the AR and the frozen GRPO reference.

Built on Lightning's ``ModelParallelStrategy`` (FSDP1's ``FSDPStrategy`` refuses CPU and manual
optimization, and GRPO is manual). Every decoder block becomes its own FSDP unit, then the module
each model's forward enters (the AV's causal LM, the AR's decoder, the AR's fp32 head) becomes the
root of its tree. Checkpoints are Lightning's distributed checkpoint directories.

Sharded models need every process to run the same collectives in the same order. Code whose number
of forward passes differs between processes (token-by-token sampling stops when a batch is done; the
AR scores only the valid answers) runs inside ``gathered``, which all-gathers the parameters once and
keeps them whole until the block ends, so nothing inside it communicates. ``full_copies`` gathers
the whole weights on global rank 0 for the end-of-fit export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from weakref import WeakKeyDictionary

import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.plugins.precision import HalfPrecision
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from nla.core.errors import ConfigError, NLAError
from nla.models import adapters

# What each unit ``shard`` made does after a forward, for ``gathered`` to restore.
_RESHARD_AFTER_FORWARD: WeakKeyDictionary[nn.Module, bool] = WeakKeyDictionary()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None, field: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"trainer.strategy.{field}", f"must be one of {', '.join(DTYPES)} or null, got {name!r}")
    return DTYPES[name]


def sharding_plan(module: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """``(name, module, fp32)`` in the order ``fully_shard`` must see them (children before their
    root): the blocks and then the entry module of the AV (``verbalizer``), of the AR
    (``reconstructor``) and of the GRPO reference (``reference.verbalizer``, not a submodule), and
    the AR head, which stays in fp32 whatever the mixed precision (a bf16 identity cannot move at a
    small learning rate)."""
    plan: list[tuple[str, nn.Module, bool]] = []
    reference = getattr(module, "reference", None)
    # Only a reference that owns a full copy says so (``FrozenCopy.shardable``); the others share the
    # policy's weights (LoRA) or are quantized: nothing of theirs to shard.
    copied = reference.verbalizer if getattr(reference, "shardable", False) else None
    for name, verbalizer in (("verbalizer", getattr(module, "verbalizer", None)), ("reference", copied)):
        if verbalizer is not None:
            model = verbalizer.model
            plan += [(f"{name}.layers.{i}", block, False) for i, block in enumerate(adapters.decoder_layers(model))]
            plan.append((f"{name}.model", model, False))
    reconstructor = getattr(module, "reconstructor", None)
    if reconstructor is not None:
        model = reconstructor.model
        plan += [(f"reconstructor.layers.{i}", block, False) for i, block in enumerate(adapters.decoder_layers(model))]
        # Reconstructor.forward enters the decoder, not the causal LM: the root must be what runs.
        plan += [("reconstructor.decoder", adapters.decoder(model), False),
                 ("reconstructor.head", reconstructor.head, True)]
    if not plan:
        raise NLAError(f"NLAFSDPStrategy shards nla's SFT and GRPO modules; {type(module).__name__} has no "
                       "verbalizer or reconstructor")
    return plan


class NLAFSDPStrategy(ModelParallelStrategy):
    """FSDP2 data parallelism over all processes (``devices`` x ``num_nodes``); see the module docstring."""

    def __init__(
        self,
        param_dtype: str | None = None,
        reduce_dtype: str | None = "float32",
        activation_checkpointing: bool = False,
        cpu_offload: bool = False,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        """
        Args:
            param_dtype: Dtype the gathered parameters compute in (``bfloat16`` on GPUs); the shards,
                gradients and optimizer state stay in the dtype the models loaded in: float32 masters
                (``model.training.dtype``; ``data.source.target.dtype`` is not read for trained models). The frozen GRPO
                reference is stored in this dtype. null: no cast.
            reduce_dtype: Dtype gradients are reduce-scattered in; null: ``param_dtype``.
            activation_checkpointing: Recompute each decoder block's activations in backward instead of
                storing them (the injected vector is part of the embedding output the first block
                receives, so the recomputation sees it).
            cpu_offload: Keep parameter shards, gradients and optimizer state in host memory
                (``CPUOffloadPolicy``); the optimizer step then runs on the CPU.
            save_distributed_checkpoint: One shard file per process in a checkpoint directory (true)
                or one full file written by rank 0 (false).
            process_group_backend: ``nccl`` / ``gloo``; null: nccl on GPUs, gloo on CPUs.
            timeout: Collective timeout.
        """
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.mixed_precision = MixedPrecisionPolicy(param_dtype=_dtype(param_dtype, "param_dtype"),
                                                    reduce_dtype=_dtype(reduce_dtype, "reduce_dtype"))
        self.activation_checkpointing = activation_checkpointing
        self.cpu_offload = cpu_offload

    def setup_environment(self) -> None:
        # Pure data parallelism: one mesh dimension over every process of every node.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer) -> None:
        if isinstance(self.precision_plugin, HalfPrecision):
            # Lightning casts the whole module after this hook; a cast after fully_shard desynchronises
            # FSDP2's parameter storage and would turn the AR's fp32 head to bf16.
            raise ConfigError("trainer.precision", "must be 32-true or bf16-mixed with NLAFSDPStrategy: load "
                              "the weights in bf16 with data.source.target.dtype and compute in bf16 with its param_dtype")
        shard(self.lightning_module, self.device_mesh["data_parallel"], self.mixed_precision,
              self.activation_checkpointing, self.cpu_offload)
        super().setup(trainer)


def shard(module: nn.Module, mesh, mixed_precision: MixedPrecisionPolicy, checkpointing: bool = False,
          cpu_offload: bool = False) -> None:
    """Apply ``sharding_plan(module)``; every trainable parameter must end up sharded."""
    from torch.distributed._composable import checkpoint

    offload = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    reference = getattr(module, "reference", None)
    plan = sharding_plan(module)
    for name, target, keep_fp32 in plan:
        if checkpointing and ".layers." in name and not name.startswith("reference."):
            # Composable checkpointing keeps parameter names, so checkpoints and exports are unchanged.
            checkpoint(target)
        # The frozen reference follows its own placement setting: host memory when it asked for it.
        place = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if (
            name.startswith("reference.") and reference.offload) else offload
        # Blocks reshard after forward; a trained model's entry stays whole until its backward needs it
        # (FSDP2's own choice for roots), the frozen reference, which has no backward, reshards at once.
        reshard = ".layers." in name or name.startswith("reference.")
        fully_shard(target, mesh=mesh, mp_policy=fp32 if keep_fp32 else mixed_precision, offload_policy=place,
                    reshard_after_forward=reshard)
        _RESHARD_AFTER_FORWARD[target] = reshard
    if any(name.startswith("reference.") for name, _, _ in plan):
        reference.sharded = True
    loose = [name for name, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if loose:
        raise NLAError(f"NLAFSDPStrategy left {len(loose)} trainable parameters unsharded (first: {loose[0]}); "
                       "the sharding plan in nla/modules/fsdp.py does not know this module")


def _units(modules) -> list[FSDPModule]:
    return [unit for module in modules if module is not None for unit in module.modules()
            if isinstance(unit, FSDPModule)]


@contextmanager
def gathered(*modules: nn.Module | None) -> Iterator[None]:
    """Keep the FSDP2 parameters of ``modules`` whole inside the block: one all-gather per unit on
    entry (every process must enter together), none in the forwards inside, a reshard on exit.
    Does nothing for modules that are not sharded, so callers need not know the strategy."""
    units = _units(modules)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(_RESHARD_AFTER_FORWARD.get(unit, True), recurse=False)


def _plain_class(module: nn.Module) -> type:
    """The class a module had before ``fully_shard`` swapped in its ``FSDP<Class>`` subclass."""
    return next(cls for cls in type(module).__mro__ if not issubclass(cls, FSDPModule))


def _gather(module: nn.Module) -> dict | None:
    """The full state dict of a module holding FSDP2 units, in host memory on global rank 0 and None
    elsewhere. Collective: every process must call it."""
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if dist.get_rank() == 0 else None


def _fill(plain: nn.Module, state: dict, source: nn.Module) -> nn.Module:
    """Load ``state`` into ``plain`` (built on the meta device), then copy the buffers a state dict
    leaves out (rotary frequencies) from ``source``."""
    plain.load_state_dict(state, strict=True, assign=True)
    buffers = dict(source.named_buffers())
    for name, buffer in list(plain.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            plain.get_submodule(owner)._buffers[leaf] = buffers[name].detach().cpu()
    return plain


def full_copies(verbalizer, reconstructor) -> tuple:
    """``(verbalizer, reconstructor)`` ready for ``nla.models.pair.export_pair``: the same objects when they
    are not sharded; under FSDP2 unsharded host-memory copies on global rank 0 and ``(None, None)`` on
    the other ranks. Collective when sharded: every process must call it."""
    if not _units((verbalizer, reconstructor)):
        return verbalizer, reconstructor
    from nla.models.reconstructor import Reconstructor
    from nla.models.verbalizer import Verbalizer

    av = ar = None
    if verbalizer is not None:
        state = _gather(verbalizer.model)
        if state is not None:
            with torch.device("meta"):
                model = _plain_class(verbalizer.model)(verbalizer.model.config)
            model = _fill(model, state, verbalizer.model)
            # Assigned tensors are separate objects: tie the output embeddings again where the config ties them.
            model.tie_weights()
            av = Verbalizer(model, verbalizer.tokenizer, verbalizer.marker, verbalizer.injection_scale)
    if reconstructor is not None:
        state = _gather(reconstructor)
        if state is not None:
            with torch.device("meta"):
                skeleton = Reconstructor(_plain_class(reconstructor.model)(reconstructor.model.config),
                                         reconstructor.layer)
            ar = _fill(skeleton, state, reconstructor)
    return av, ar
