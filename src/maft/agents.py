"""Who answers in a debate: which model serves agent n in round m of iteration l.

Round 1 is answered by generation agent n (role ``gen_n``), every later round by critic agent n
(``critic_n``). Iteration 0 is the base model everywhere. Iteration l >= 1 uses the roles finetuned in
iteration l, saved in ``<run>/iter_<l>/agents/<role>/`` (a PEFT adapter or a full checkpoint); a role
the run does not finetune (the ablations) stays the base model; a shared run (single-agent finetuning)
has one model, ``single``, answering as every agent in every round.

:class:`Agents` only describes them. An engine's ``serve(agents)`` makes them answerable (loads
adapters into memory, or onto a server under unique names) and returns the ``adapter_for(agent,
round)`` that a debate uses. The loop, transfer and the diversity stage all go through here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from maft.config import RunConfig

#: (agent, round) -> the adapter that answers (None: the base model): what ``serve(agents)`` returns.
AdapterFor = Callable[[int, int], "str | None"]

#: The one model of a shared (single-agent finetuning) run, answering as every agent in every round.
SINGLE = "single"


def roles(agents: int, rounds: int = 2) -> list[str]:
    """The 2N agent roles: gen_0..gen_{N-1}, then critic_0..critic_{N-1} (none with a single round)."""
    return [f"gen_{n}" for n in range(agents)] + ([f"critic_{n}" for n in range(agents)] if rounds > 1 else [])


def role_for(agent: int, round: int) -> str:
    """Generation agent n answers round 1; critic agent n answers every later round."""
    return f"gen_{agent}" if round == 1 else f"critic_{agent}"


def trained_roles(config: RunConfig) -> list[str]:
    """The models a run finetunes: every role, the generation or critic roles only, or one shared model."""
    if config.train.shared:
        return [SINGLE]
    every = roles(config.debate.agents, config.debate.rounds)
    prefix = {"all": "", "generation": "gen_", "critic": "critic_"}[config.train.roles]
    return [r for r in every if r.startswith(prefix)]


def fingerprint(path: Path) -> str:
    """Eight hex digits that change whenever the agent saved at ``path`` is written again: the names, sizes and
    modification times of its files (an adapter's or a checkpoint's folder; nothing is read)."""
    digest = hashlib.sha256()
    for item in sorted(Path(path).iterdir()):
        if item.is_file():
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:8]


def saved_kind(path: Path, *, missing_ok: bool = False) -> Literal["adapter", "checkpoint"] | None:
    """What training left at ``path``: a PEFT adapter or a full Hugging Face checkpoint. Neither is a
    FileNotFoundError naming the path, or None with ``missing_ok``."""
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "checkpoint"
    if missing_ok:
        return None
    raise FileNotFoundError(f"no adapter (adapter_config.json) or checkpoint (config.json) at {path}")


@dataclass(frozen=True)
class Agents:
    """The models of one iteration: role -> where its weights are (empty: the base model answers all)."""

    iteration: int
    models: Mapping[str, Path] = field(default_factory=dict)
    shared: bool = False

    def answerer(self, agent: int, round: int) -> str | None:
        """The role that answers (agent, round), or None for the base model."""
        if self.shared:
            return SINGLE if SINGLE in self.models else None
        role = role_for(agent, round)
        return role if role in self.models else None


def agents_at(config: RunConfig, root: Path, iteration: int) -> Agents:
    """Iteration ``iteration``'s agents of the run in ``root`` (iteration 0: the base model)."""
    if iteration == 0:
        return Agents(0)
    folder = Path(root) / f"iter_{iteration}" / "agents"
    return Agents(iteration, {role: folder / role for role in trained_roles(config)}, shared=config.train.shared)
