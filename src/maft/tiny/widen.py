"""The tiny model with wider attention heads, computing the same function (for serving engines).

vLLM's CPU attention supports head sizes 32, 64, 80, ... but not the shipped model's 24. This module
writes an equivalent Llama checkpoint whose heads are ``head_dim`` wide (default 32), exactly:

- each head's query, key and value projections gain zero rows, and the output projection zero columns,
  so the extra dimensions contribute nothing to any dot product or output;
- rotary embeddings pair dimension i with i + d/2 at frequency theta^(-2i/d). The old dimensions
  i < d_old/2 map to i and d_new/2 + i, and rope_theta becomes theta^(d_new/d_old), so that the
  frequencies of the old pairs are unchanged (the new pairs rotate zeros);
- attention scores are scaled by 1/sqrt(head_dim): the query weights are multiplied by
  sqrt(d_new/d_old) to keep the scores as they were.

The result gives the same logits as the original up to float rounding (tested), so a run served by
vLLM from the widened checkpoint is the embedded default model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def widen_heads(source: str | Path, out: str | Path, head_dim: int = 32) -> Path:
    """Write ``source`` (a Llama checkpoint) to ``out`` with ``head_dim``-wide attention heads."""
    source, out = Path(source), Path(out)
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"widen_heads handles Llama checkpoints; {source} is {config.get('model_type')!r}")
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    old = config.get("head_dim") or config["hidden_size"] // heads
    if head_dim < old or head_dim % 2 or old % 2:
        raise ValueError(f"head_dim must be even and at least the current {old}, got {head_dim}")
    weights = load_file(source / "model.safetensors")
    # old dimension -> new dimension within a head: first halves stay, second halves move to the new half
    half_old, half_new = old // 2, head_dim // 2
    index = torch.tensor([i if i < half_old else half_new + (i - half_old) for i in range(old)])

    def widen_rows(w: torch.Tensor, n_heads: int, scale: float = 1.0) -> torch.Tensor:
        w = w.reshape(n_heads, old, -1)
        wide = torch.zeros(n_heads, head_dim, w.shape[-1], dtype=w.dtype)
        wide[:, index] = w * scale
        return wide.reshape(n_heads * head_dim, -1)

    def widen_value_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
        w = w.reshape(n_heads, old, -1)  # values are not rotated: keep their order, pad at the end
        return torch.cat([w, torch.zeros(n_heads, head_dim - old, w.shape[-1], dtype=w.dtype)], 1).reshape(
            -1, w.shape[-1]
        )

    for name in list(weights):
        w = weights[name]
        if name.endswith("self_attn.q_proj.weight"):
            weights[name] = widen_rows(w, heads, math.sqrt(head_dim / old))
        elif name.endswith("self_attn.k_proj.weight"):
            weights[name] = widen_rows(w, kv_heads)
        elif name.endswith("self_attn.v_proj.weight"):
            weights[name] = widen_value_rows(w, kv_heads)
        elif name.endswith("self_attn.o_proj.weight"):
            w = w.reshape(w.shape[0], heads, old)
            weights[name] = torch.cat([w, torch.zeros(w.shape[0], heads, head_dim - old, dtype=w.dtype)], 2).reshape(
                w.shape[0], -1
            )
        elif "self_attn" in name and name.endswith("bias"):
            raise ValueError(f"widen_heads does not handle attention biases ({name})")
    rope = config.get("rope_parameters") or {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"widen_heads handles default rotary embeddings, not {rope.get('rope_type')!r}")
    rope = {**rope, "rope_theta": float(rope["rope_theta"]) ** (head_dim / old)}
    config.update(head_dim=head_dim, rope_parameters=rope)
    config.pop("rope_theta", None)
    out.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in {"model.safetensors", "config.json"}:
            shutil.copy2(f, out / f.name)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out
