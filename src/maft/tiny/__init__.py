"""The embedded default model: a tiny Llama chat model pretrained by maft's recipe on synthetic debates."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT = Path(__file__).parent / "checkpoint"


def default_checkpoint() -> Path:
    """The shipped checkpoint, used whenever no model is named."""
    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded tiny model is missing from {CHECKPOINT}; "
            f"rebuild it with `maft tiny train --out {CHECKPOINT}`"
        )
    return CHECKPOINT
