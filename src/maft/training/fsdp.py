"""What a role's FSDP processes (:mod:`maft.training.distributed`) need beside the trainer's own settings
(:func:`maft.training.sft.parallelism`): two adjustments of the libraries, each undone by nothing and needed by
nothing else.

- :func:`allow_fsdp_on_cpu`: accelerate turns FSDP on only for accelerators (its multi-CPU state ignores an FSDP
  plugin), while torch's FSDP2 runs on a CPU, its collectives over gloo. In a CPU process of a launch, accelerate's
  state is promoted to FSDP as its GPU branch would promote it (the plugin kept, its mixed precision set), so a
  role's processes on a CPU run the very path they run on GPUs: sharding, gathering and saving. That is what
  tests/test_distributed.py trains. :func:`maft.training.sft.sft_trainer` checks that it took.
- :func:`unwrap_checkpointing`: under FSDP, accelerate wraps each decoder layer for activation checkpointing. The
  state dict's names skip the wrappers, but PEFT finds an adapter's weights by module names, which keep them: with
  the wrappers on, peft 0.21 saves an empty adapter. They come off once training is done, before the save (FSDP
  shards the layers inside them, so the sharding stays as it is).

A full checkpoint gathered from FSDP keeps a tied output layer as its own tensor (a copy of the input
embeddings): transformers and vLLM load it tied, as they load one saved by one process.
"""

from __future__ import annotations

import functools
from typing import Any


def allow_fsdp_on_cpu() -> None:
    """Promote accelerate's multi-CPU state to FSDP whenever it is given an FSDP plugin, in this process from now
    on (the module docstring). Idempotent; changes nothing on GPUs, whose state is not multi-CPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "maft_fsdp_on_cpu", False):
        return

    @functools.wraps(init)
    def promoted(self: AcceleratorState, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if fsdp_plugin is not None and self.mixed_precision != "no":
                plugin.set_mixed_precision(self.mixed_precision)
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # read back by later states

    promoted.maft_fsdp_on_cpu = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = promoted


def unwrap_checkpointing(model: Any) -> None:
    """Put each layer that an activation-checkpointing (or offloading) wrapper holds back in the wrapper's place."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

    while wrapped := [(n, m) for n, m in model.named_modules() if isinstance(m, ActivationWrapper)]:
        name, wrapper = wrapped[0]
        model.set_submodule(name, wrapper._checkpoint_wrapped_module)
