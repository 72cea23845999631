"""``transformers serve``: no LoRA, so each agent is a merged checkpoint that the server loads by path.

A LoRA agent is merged into a copy of the base model once, into ``<run>/iter_<l>/served/<role>-<fingerprint>/``
(written atomically, kept for resume; :func:`~maft.agents.fingerprint` changes when the adapter is written
again, and the role's older copies are removed); a fully finetuned agent is served from its own folder, through a
link of the same name. The server loads a model on its first request by its absolute path and keeps it, so a
path names one run, iteration, role and set of weights: never stale weights. The base model is served by its
path too (``model.name`` must be a local checkpoint the server can read, or a hub id it has cached).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from maft.agents import Agents, fingerprint, saved_kind
from maft.servers.base import ServerKind

if TYPE_CHECKING:
    from maft.engines.openai import OpenAIEngine


class TransformersServer(ServerKind):
    name: ClassVar[str] = "transformers"

    def __init__(self, *, base_model: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.base_model = base_model

    def publish(self, engine: OpenAIEngine, agents: Agents) -> Mapping[str, str]:
        names = {role: str(self.merged(path).absolute()) for role, path in agents.models.items()}
        self.canary(engine, agents, names)
        return names

    def merged(self, path: Path) -> Path:
        """The checkpoint that serves the agent saved at ``path`` (merging a LoRA adapter once per version of it)."""
        served = path.parent.parent / "served"
        target = served / f"{path.name}-{fingerprint(path)}"
        if (target / "config.json").is_file():  # a merged copy, or a link that still reaches its checkpoint
            return target
        for old in served.glob(f"{path.name}-*"):  # the role's earlier weights (retrained since)
            old.unlink() if old.is_symlink() else shutil.rmtree(old, ignore_errors=True)
        if saved_kind(path) == "checkpoint":  # served from its own folder, under a name for these weights
            served.mkdir(parents=True, exist_ok=True)
            # relative: the run directory may move (same files, same fingerprint) and the link still reaches it
            target.symlink_to(os.path.relpath(path.resolve(), served.resolve()), target_is_directory=True)
            return target
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from maft.store import atomic_dir

        with atomic_dir(target) as tmp:
            base = AutoModelForCausalLM.from_pretrained(self.base_model, dtype="auto")
            PeftModel.from_pretrained(base, str(path)).merge_and_unload().save_pretrained(tmp)
            AutoTokenizer.from_pretrained(self.base_model).save_pretrained(tmp)
        return target
