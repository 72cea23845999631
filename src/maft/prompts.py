"""The text of every message maft sends to a model during a debate.

One module owns these strings because the embedded tiny model is pretrained on exactly them:
change a format here and the shipped checkpoint must be retrained (``maft tiny train``).

A debate conversation for agent n looks like::

    user:      task prompt (from the task, e.g. "What is the result of ...? ... \\boxed{answer} ...")
    assistant: agent n's round-1 response
    user:      critic_message(...)   # shows the other agents' round m-1 responses (or a summary)
    assistant: agent n's round-m response
    ...
"""

from __future__ import annotations

from collections.abc import Sequence

#: The answer format every built-in task asks for.
BOXED_FORMAT = "\\boxed{answer}"

NO_ANSWER = "no answer"


def answers_digest(answers: Sequence[str | None]) -> str:
    """The compact ``answers`` summary: the other agents' extracted final answers, in order.

    ``None`` (an unparseable response) is shown as "no answer".
    """
    shown = ", ".join(a if a is not None else NO_ANSWER for a in answers)
    return f"The other agents' answers are: {shown}."


def summarizer_request(responses: Sequence[str]) -> str:
    """The user message asking a model to summarize other agents' responses (``model`` summarizer)."""
    body = "\n\n".join(f"Solution {i + 1}: {r}" for i, r in enumerate(responses))
    return (
        f"Here are solutions to a problem from other agents:\n\n{body}\n\n"
        "Summarize these solutions briefly, keeping each final answer."
    )


def critic_message(
    *,
    responses: Sequence[str] | None = None,
    summary: str | None = None,
    answer_format: str = BOXED_FORMAT,
) -> str:
    """The user message of a debate round m > 1.

    Give either the other agents' raw round m-1 ``responses`` (the ``concat`` summarizer) or a
    ``summary`` of them (the ``answers`` or ``model`` summarizer).
    """
    if (responses is None) == (summary is None):
        raise ValueError("critic_message needs exactly one of responses= or summary=")
    if responses is not None:
        shown = "\n\n".join(f"One agent solution: {r}" for r in responses)
        head = f"These are the solutions to the problem from other agents:\n\n{shown}"
        advice = "the solutions from other agents"
    else:
        head = f"Here is a summary of the other agents' solutions: {summary}"
        advice = "this summary"
    return (
        f"{head}\n\nUsing {advice} as additional advice, give an updated answer. "
        f"Put your final answer in the form {answer_format} at the end of your response."
    )


def rationalization_hint(question: str, answer: str) -> str:
    """STaR's rationalization prompt: the task prompt with the gold ``answer`` given as a hint."""
    return f"{question}\n\nHint: the correct answer is {answer}. Explain step by step how to reach it."
