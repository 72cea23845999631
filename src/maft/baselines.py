"""The methods ``maft compare`` runs: maft and the baselines (SPEC section 4), each a set of config overrides.

Every method is an ordinary run (``maft run --method NAME``) on the same model, problems and seed; the
overrides below are all that differs. Methods without finetuning use iteration 0 only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def finetunes(self) -> bool:
        return self.overrides.get("iterations", None) != 0

    @property
    def uses_gold_labels(self) -> bool:
        return self.overrides.get("data.label") == "gold"


METHODS: dict[str, Method] = {
    "maft": Method("multiagent finetuning: 2N agents, each finetuned on its own majority-consistent data"),
    "single": Method("single agent: one sample per problem", {"iterations": 0, "debate.agents": 1, "debate.rounds": 1}),
    "majority": Method("majority vote over N independent samples", {"iterations": 0, "debate.rounds": 1}),
    "debate": Method("multiagent debate with the base model", {"iterations": 0}),
    "star": Method(
        "STaR: one agent finetuned on its own answers that match the gold answer, restarting from the base model",
        {"debate.agents": 1, "debate.rounds": 1, "data.label": "gold", "train.init": "base"},
    ),
    "majority_ft": Method(
        "majority-vote finetuning: one model finetuned on the N samples that agree with their majority, "
        "then majority-voted",
        {"debate.rounds": 1, "train.shared": True},
    ),
    "single_agent_ft": Method(
        "single-agent finetuning: one model finetuned on all agents' debate data (D^G and D^C), used as every agent",
        {"train.shared": True},
    ),
    "gen_only": Method("ablation: only the generation agents finetuned (critics stay the base model)", {"train.roles": "generation"}),
    "critic_only": Method("ablation: only the critic agents finetuned (generators stay the base model)", {"train.roles": "critic"}),
}


def method_overrides(name: str) -> list[str]:
    """``--set``-style overrides for method ``name`` (its label included)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}")
    items = {"method": name, **METHODS[name].overrides}
    return [f"{k}={_yaml(v)}" for k, v in items.items()]


def _yaml(value: Any) -> str:
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)
