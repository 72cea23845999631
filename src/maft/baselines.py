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


#: The paper's single-agent finetuning (section 2.2): one model on every final-round response that matches
#: the majority, as (question, response) pairs, used as every agent.
_SINGLE_AGENT_FT = {"train.shared": True, "data.shared_from": "majority_responses"}
_STAR = {"debate.agents": 1, "debate.rounds": 1, "data.label": "gold", "train.init": "base"}

METHODS: dict[str, Method] = {
    "maft": Method("multiagent finetuning: 2N agents, each finetuned on its own majority-consistent data"),
    "single": Method("single agent: one sample per problem", {"iterations": 0, "debate.agents": 1, "debate.rounds": 1}),
    "majority": Method("majority vote over N independent samples", {"iterations": 0, "debate.rounds": 1}),
    "debate": Method("multiagent debate with the base model", {"iterations": 0}),
    "star": Method(
        "STaR: one agent finetuned on its own answers that match the gold answer, and on the right answers it "
        "finds when a wrong one is asked again with the gold answer as a hint (rationalization); restarts from "
        "the base model every iteration",
        {**_STAR, "data.rationalize": True},
    ),
    "star_no_rationalization": Method(
        "STaR without rationalization: one agent finetuned on its own answers that match the gold answer, "
        "restarting from the base model",
        _STAR,
    ),
    "majority_ft": Method(
        "majority-vote finetuning: one model finetuned on the N samples that agree with their majority, "
        "then majority-voted",
        {"debate.rounds": 1, "train.shared": True},
    ),
    "single_agent_ft": Method(
        "single-agent finetuning (the paper's section 2.2): one model finetuned on every final-round debate "
        "response that matches the majority, as (question, response) pairs, then used as every agent",
        _SINGLE_AGENT_FT,
    ),
    "single_agent_ft_no_debate": Method(
        "single-agent finetuning without debate (Table 2): the section 2.2 model answering alone",
        {**_SINGLE_AGENT_FT, "debate.test_agents": 1, "debate.test_rounds": 1},
    ),
    "single_agent_ft_t2": Method(
        "single-agent finetuning at temperature 2 (appendix E.1, a diversity baseline): the section 2.2 method "
        "with every debate sampled at temperature 2",
        {**_SINGLE_AGENT_FT, "debate.temperature": 2.0},
    ),
    "single_agent_ft_all_data": Method(
        "ablation: one model finetuned on the union of the agents' D^G and D^C (generation and critic format), "
        "used as every agent",
        {"train.shared": True},
    ),
    "no_summary": Method(
        "ablation (Table 2, 'w/o summary'): the critics see the other agents' whole responses concatenated",
        {"debate.summarizer": "concat"},
    ),
    "gen_only": Method(
        "ablation (Table 2, 'w/o critic'): only the generation agents finetuned (critics stay the base model)",
        {"train.roles": "generation"},
    ),
    "critic_only": Method(
        "ablation: only the critic agents finetuned (generators stay the base model)", {"train.roles": "critic"}
    ),
}

#: What ``maft compare`` runs when no methods are named: the paper's Table 1 methods, its section 2.2
#: single-agent finetuning, and the two role ablations.
DEFAULT_METHODS: list[str] = [
    "maft",
    "single",
    "majority",
    "debate",
    "star",
    "majority_ft",
    "single_agent_ft",
    "gen_only",
    "critic_only",
]


def method_overrides(name: str) -> list[str]:
    """``--set``-style overrides for method ``name`` (its label included)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}")
    items = {"method": name, **METHODS[name].overrides}
    return [f"{k}={_yaml(v)}" for k, v in items.items()]


def method_conflicts(name: str, config: Any) -> list[str]:
    """The settings of ``config`` (a RunConfig) that contradict method ``name``'s preset, each as
    ``key=<given> (the method sets <preset>)``: a run labelled with a method must be that method."""
    conflicts = []
    for key, preset in METHODS[name].overrides.items():
        given = config
        for part in key.split("."):
            given = getattr(given, part)
        if given != preset:
            conflicts.append(f"{key}={_yaml(given)} (the method sets {_yaml(preset)})")
    return conflicts


def _yaml(value: Any) -> str:
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)
