"""The vocabulary shared across modules: each named choice defined once, imported by the config that
offers it and the code that acts on it. Nothing here imports from maft.
"""

from __future__ import annotations

from typing import Literal

#: How answers are compared: numbers (exactly, as fractions), math expressions (math-verify), or a letter.
GraderKind = Literal["numeric", "math", "choice"]

#: What a critic sees of the other agents' previous responses: their final answers, the raw responses,
#: or a summary written by the base model.
Summarizer = Literal["answers", "concat", "model"]

#: Which answer class wins a tie between the largest ones: seeded random (the paper) or the first.
TieBreak = Literal["random", "first"]

#: What a response cut off at max_new_tokens counts as: no answer (abstain) or its extracted answer (keep).
Truncated = Literal["abstain", "keep"]

#: How much of D^C+ joins D^C- in a critic's data (see maft.data.agent_data).
CriticMix = Literal["fraction", "share", "authors"]
