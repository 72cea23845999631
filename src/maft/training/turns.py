"""Which tokens of a conversation are the assistant's, for a chat template without ``{% generation %}`` markers
that TRL has no training version of (Mistral's, Llama 2's, many finetunes'): ``train.critic_loss=all_turns``
then still puts the loss on every assistant turn.

TRL's assistant-only loss needs the markers: the template itself says which rendered text is the assistant's.
Without them, the same spans come from rendering: assistant turn ``i`` of ``messages`` is the text that
``messages[:i + 1]`` adds to ``messages[:i]`` rendered with the generation prompt, that is the turn's content and
whatever the template closes it with (an end-of-turn token such as Mistral's ``</s>``), which is what a template's
markers enclose (the tiny model's: ``{content}<|end|>\\n``; tests/test_critic_loss.py checks that both give the
same tokens). A token carries loss when its first character lies in such a span (the tokenizer's offsets).

This needs a template that renders a conversation's beginning the same whatever follows (prefix-preserving; not
so, e.g., where a template drops an earlier turn's reasoning once a later one exists), and a fast tokenizer (its
offsets). :func:`rendering_problem` checks both on a probe conversation before any compute; a conversation that
breaks the property all the same is refused when its role's data is prepared, naming it.

The rows go to TRL already tokenized (``input_ids`` and ``assistant_masks``), which its dataset preparation turns
into labels, truncates and filters as it does its own (``SFTTrainer._prepare_dataset``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: A two-round critic conversation, to check a template up front (:func:`rendering_problem`).
PROBE = [
    {"role": "user", "content": "What is 2+3? Put the answer in \\boxed{}."},
    {"role": "assistant", "content": "2+3=5. The answer is \\boxed{5}."},
    {"role": "user", "content": "Another agent answered 6. Give an updated answer."},
    {"role": "assistant", "content": "2+3=5, so 6 was a slip. The answer is \\boxed{5}."},
]


class NotPrefixPreserving(ValueError):
    """The chat template renders a conversation's beginning differently once more turns follow, or prompts an
    answer otherwise than it opens an assistant turn."""


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it (module docstring)."""
    text = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = (
            _render(tokenizer, messages[:i], generation_prompt=True),
            _render(tokenizer, messages[: i + 1]),
        )
        if not (text.startswith(_render(tokenizer, messages[:i])) and text.startswith(through)):
            raise NotPrefixPreserving(
                f"the chat template renders the conversation before assistant turn {i} differently once it goes on"
            )
        if not through.startswith(before):
            raise NotPrefixPreserving(
                f"the chat template's generation prompt is not how it opens assistant turn {i} (a model trained on "
                "that turn would be prompted differently when it answers)"
            )
        spans.append((len(before), len(through)))
    return text, spans


def masked_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict]) -> dict[str, list[int]]:
    """``input_ids`` of the rendered conversation (as ``apply_chat_template`` tokenizes it) and ``assistant_masks``:
    1 for each token whose first character is in an assistant turn (:func:`assistant_spans`)."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    masks = [int(any(start <= first < end for start, end in spans)) for first, _ in encoded["offset_mapping"]]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": masks}


def rendering_problem(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why the assistant turns of this tokenizer's conversations cannot be found by rendering, or None when they
    can (a fast tokenizer, and a template that renders :data:`PROBE` prefix-preservingly with loss tokens in
    each turn)."""
    if not getattr(tokenizer, "is_fast", False):
        return "has a slow tokenizer (no token offsets to find the assistant turns by)"
    try:
        row = masked_conversation(tokenizer, PROBE)
    except NotPrefixPreserving as e:
        return f"has a chat template that cannot be read turn by turn: {e}"
    except Exception as e:  # a template that raises on a plain user/assistant conversation
        return f"has a chat template that cannot render a user/assistant conversation ({type(e).__name__}: {e})"
    if not any(row["assistant_masks"]):
        return "has a chat template whose rendering puts no token in the assistant turns"
    return None
