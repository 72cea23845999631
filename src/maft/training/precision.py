"""Training precision: ``train.bf16`` resolved for the device a job trains on, and attention kept in fp32 on a CPU.

- ``train.bf16: auto`` (the default) trains in bfloat16 mixed precision where the device computes bf16
  natively: a CUDA GPU that has it in hardware (compute capability 8.0 and later: A100, H100, L4, ...; not
  the emulation torch also accepts on a T4 or V100), or a CPU with AVX512-BF16 or AMX (``torch.cpu``'s checks);
  elsewhere (older GPUs and CPUs, MPS) in fp32. ``true`` and ``false`` force it. Full finetuning
  (``train.method=full``) under ``auto`` trains in fp32: maft loads the model in the dtype it trains in and keeps
  no fp32 master copy, so bf16 weights would round away updates smaller than 1/256 of a weight (the paper's
  lr 1e-5); ``true`` trains full models in bf16 anyway, for half the memory. A job resolves ``auto`` once, at
  its start (:func:`resolve_bf16`), so everything below it sees a plain bool; each role records what it
  trained in (``TrainResult.bf16``); the run's config keeps ``auto``, and the loop prints what it resolved to
  (and warns on resume where earlier roles trained in the other precision).
- bf16 means what it meant before ``auto``: the frozen base model (LoRA) or the whole model (full) is loaded in
  bf16, the trainer runs under bf16 autocast, PEFT keeps the adapters' weights in fp32.
- On a CPU, bf16 matrix products run at about 3x fp32's (this 2-core AMD EPYC with AVX512-BF16: 380 against
  125-135 GFLOP/s at the tiny model's training shapes), but torch's CPU flash-attention backward in bf16 takes
  twice as long as in fp32 (12.8 s against 6.5 s over one iteration's concurrent training), and bf16 decoding
  attention is slower still. So a bf16 job on a CPU computes attention in fp32 (:func:`attention_in_fp32`):
  SDPA on its inputs upcast, its output cast back, the rest of the layer in bf16. One iteration's concurrent
  training of the default run: 27.7 s against 36.6 s in fp32 and 34.6 s with bf16 attention.
  Inference (the in-process engine) stays in the checkpoint's dtype: decoding on a CPU is bound by reading the
  key/value cache, and bf16 SDPA there is slower, not faster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maft.config import TrainConfig

#: The attention implementation :func:`attention_in_fp32` registers with transformers.
FP32_SDPA = "maft_sdpa_fp32"


def device_kind(device: str) -> str:
    """``cuda``, ``cpu`` or ``mps`` for a job's ``device`` (``auto``: CUDA when present, else the CPU, as the
    trainer picks)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.split(":")[0]


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bf16 natively (what ``train.bf16: auto`` trains in bf16 on)."""
    import torch

    kind = device_kind(device)
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if kind == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def bf16_for(cfg: TrainConfig, device: str) -> bool:
    """``train.bf16`` on ``device``: ``auto`` resolved by :func:`native_bf16` (fp32 for full finetuning)."""
    return bool(resolve_bf16(cfg, device).bf16)


def precision_line(cfg: TrainConfig, device: str) -> str:
    """What ``train.bf16: auto`` trains in on ``device``, and why, in a few words."""
    kind = device_kind(device)
    what = {"cuda": "this GPU", "cpu": "this CPU"}.get(kind, kind)
    if cfg.method == "full":
        return "training in fp32 (full finetuning keeps fp32 weights under auto; bf16: true halves them)"
    if not native_bf16(device):
        return f"training in fp32 ({what} has no native bf16)"
    fp32 = ", attention in fp32" if kind == "cpu" else ""
    native = " (AVX512-BF16/AMX)" if kind == "cpu" else ""
    return f"training in bf16 mixed precision{fp32}: {what} computes bf16 natively{native}"


def resolve_bf16(cfg: TrainConfig, device: str) -> TrainConfig:
    """``cfg`` with ``bf16`` a plain bool for a job on ``device``."""
    return cfg if cfg.bf16 != "auto" else with_native_bf16(cfg, native_bf16(device))


def with_native_bf16(cfg: TrainConfig, native: bool) -> TrainConfig:
    """``cfg`` with ``auto`` resolved for a device that computes bf16 natively (``native``) or not: bf16 there,
    except for full finetuning (module docstring)."""
    if cfg.bf16 != "auto":
        return cfg
    return cfg.model_copy(update={"bf16": native and cfg.method != "full"})


def attention_in_fp32(model: Any) -> bool:
    """Compute ``model``'s attention in fp32 (module docstring): where it runs PyTorch's SDPA, switch it to the
    same SDPA (and the same masks) on fp32 inputs. Returns whether it switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_SDPA, _sdpa_in_fp32)
    AttentionMaskInterface.register(FP32_SDPA, sdpa_mask)
    model.set_attn_implementation(FP32_SDPA)
    return True


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on fp32 copies of its inputs (autocast off inside), its output in the
    inputs' dtype."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    if isinstance(kwargs.get("position_bias"), torch.Tensor) and kwargs["position_bias"].is_floating_point():
        kwargs["position_bias"] = kwargs["position_bias"].float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(dtype), weights
