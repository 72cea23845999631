"""train.critic_loss: which tokens of a critic's conversation carry loss, through TRL's real data preparation
on the real tiny tokenizer; the tiny chat template's generation markers; and the refusal of a template
without them."""

from __future__ import annotations

import re
import shutil

import pytest
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoTokenizer
from trl.chat_template_utils import has_generation_markers

from maft.config import TrainConfig
from maft.data.agent_data import Example
from maft.tiny import default_checkpoint
from maft.tiny.tokenizer import CHAT_TEMPLATE
from maft.training.concurrent import prepared_rows
from maft.training.sft import check_critic_loss, finetune, sft_config, sft_trainer

FINAL = TrainConfig(epochs=1, batch_size=4)
ALL_TURNS = FINAL.model_copy(update={"critic_loss": "all_turns"})

#: The tiny chat template before it had generation markers: what every conversation rendered as.
OLD_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

Q = "Compute 12+3*4. Put the answer in \\boxed{}."
A1 = "3*4=12, 12+12=24. The answer is \\boxed{24}."
OTHERS = "Another agent said: 3*4=12, 12+12=25. The answer is \\boxed{25}. Update your answer."
A2 = "3*4=12, 12+12=24, so 25 was a slip. The answer is \\boxed{24}."


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def critic(final=A2, pid="p0") -> Example:
    """Round 2 of a two-round debate: the question, the agent's own round-1 answer, the others' answers."""
    prompt = [user(Q), assistant(A1), user(OTHERS)]
    return Example(prompt=prompt, completion=[assistant(final)], problem_id=pid, agent=0, kind="critic-")


def generation(answer=A1, pid="p0") -> Example:
    return Example(prompt=[user(Q)], completion=[assistant(answer)], problem_id=pid, agent=0, kind="generation")


def prepared(examples, cfg, tmp_path):
    """(input_ids, labels) of each example as TRL's SFTTrainer prepares them for ``finetune``."""
    trainer = sft_trainer(str(default_checkpoint()), examples, tmp_path / "scratch", cfg, device="cpu")
    return [(row["input_ids"], row["labels"]) for row in trainer.train_dataset]


def loss_runs(ids, labels, tok):
    """The decoded text of each maximal run of tokens that carry loss, with the two tokens before it."""
    assert all(lab in (-100, i) for i, lab in zip(ids, labels, strict=True))  # a label is its token or ignored
    runs, start = [], None
    for k, lab in enumerate([*labels, -100]):
        if lab != -100 and start is None:
            start = k
        elif lab == -100 and start is not None:
            runs.append((tok.decode(ids[start - 2 : start]), tok.decode(ids[start:k])))
            start = None
    return runs


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(default_checkpoint())


CONVERSATIONS = [
    [user("hi")],
    [user(Q), assistant(A1)],
    [user(Q), assistant(A1), user(OTHERS)],
    [user(Q), assistant(A1), user(OTHERS), assistant(A2)],
    [{"role": "system", "content": "Be brief."}, user(Q), assistant(""), user(""), assistant("{% x %} <|end|>")],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_generation_markers_render_nothing(tok, messages, add_generation_prompt):
    new = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    old = tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False, chat_template=OLD_TEMPLATE
    )
    assert new == old
    assert new.startswith("<|bos|>") and new.count("<|end|>\n") >= len(messages)


def test_the_shipped_and_recipe_templates_have_the_markers(tok, recipe_checkpoint):
    assert tok.chat_template == CHAT_TEMPLATE and has_generation_markers(tok.chat_template)
    assert (default_checkpoint() / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert AutoTokenizer.from_pretrained(recipe_checkpoint).chat_template == CHAT_TEMPLATE  # a retrained checkpoint


def test_critic_loss_values_are_checked():
    assert TrainConfig().critic_loss == "final"
    with pytest.raises(ValidationError, match="'final' or 'all_turns'"):
        TrainConfig(critic_loss="every_turn")


@pytest.mark.slow
def test_all_turns_puts_loss_on_every_assistant_turn_final_on_the_last(tok, tmp_path):
    [(ids_final, labels_final)] = prepared([critic()], FINAL, tmp_path / "final")
    [(ids_all, labels_all)] = prepared([critic()], ALL_TURNS, tmp_path / "all")
    assert ids_final == ids_all  # the same text, tokenized the same way
    full = tok.apply_chat_template([user(Q), assistant(A1), user(OTHERS), assistant(A2)], tokenize=False)
    assert tok.decode(ids_all) == full
    # every assistant turn: its content and its end-of-turn token (and the newline after it), nothing else
    assert loss_runs(ids_all, labels_all, tok) == [
        ("<|assistant|>\n", A1 + "<|end|>\n"),
        ("<|assistant|>\n", A2 + "<|end|>\n"),
    ]
    assert loss_runs(ids_final, labels_final, tok) == [("<|assistant|>\n", A2 + "<|end|>\n")]
    assert sum(lab != -100 for lab in labels_all) > sum(lab != -100 for lab in labels_final) > 0


@pytest.mark.slow
def test_single_turn_examples_carry_the_same_loss_either_way(tok, tmp_path):
    gen = generation()
    [final] = prepared([gen], FINAL, tmp_path / "final")
    assert loss_runs(*final, tok) == [("<|assistant|>\n", A1 + "<|end|>\n")]
    # a shared model's data mixes both: the whole set goes through assistant-only loss
    [mixed_gen, (_, mixed_critic_labels)] = prepared([gen, critic()], ALL_TURNS, tmp_path / "mixed")
    assert mixed_gen == final
    [(_, critic_final_labels)] = prepared([critic()], FINAL, tmp_path / "critic_final")
    assert sum(lab != -100 for lab in mixed_critic_labels) > sum(lab != -100 for lab in critic_final_labels)
    # generation data alone has no earlier turns: it trains as with final
    assert prepared([gen], ALL_TURNS, tmp_path / "gen_only") == [final]


@pytest.mark.slow
def test_all_turns_training_saves_a_trained_adapter(tmp_path):
    examples = [
        critic(pid=f"p{i}", final=f"{i}*4={4 * i}, 12+{4 * i}={12 + 4 * i}. The answer is \\boxed{{{12 + 4 * i}}}.")
        for i in range(4)
    ]
    out = tmp_path / "critic_0"
    result = finetune(str(default_checkpoint()), examples, out, ALL_TURNS, seed=1, device="cpu")
    assert result.examples == 4 and result.steps == 1 and result.train_loss is not None and result.train_loss > 0
    lora_b = {k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero; training moved it


#: Mistral-7B-Instruct-v0.2's chat template: no generation markers, and no training version in TRL.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def checkpoint_with(tmp_path, template: str, name: str) -> str:
    """The tiny checkpoint (weights and tokenizer) with another chat template."""
    copy = tmp_path / name
    shutil.copytree(default_checkpoint(), copy)
    (copy / "chat_template.jinja").write_text(template)
    assert not has_generation_markers(AutoTokenizer.from_pretrained(copy).chat_template)
    return str(copy)


def stripped_template() -> str:
    """The tiny chat template with its generation markers taken out: it renders every conversation the same."""
    template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", CHAT_TEMPLATE)
    assert template != CHAT_TEMPLATE and not has_generation_markers(template)
    return template


@pytest.mark.slow
def test_a_template_without_markers_masks_the_same_tokens_by_rendering(tok, tmp_path):
    """Without markers (and no TRL training template), each assistant turn is what its message adds to the
    rendering: for the tiny template, the very tokens its markers enclose, in both training paths."""
    base = checkpoint_with(tmp_path, stripped_template(), "no_markers")
    check_critic_loss(base, ALL_TURNS)
    marked = prepared([generation(), critic()], ALL_TURNS, tmp_path / "marked")
    trainer = sft_trainer(base, [generation(), critic()], tmp_path / "scratch", ALL_TURNS, device="cpu")
    assert [(row["input_ids"], row["labels"]) for row in trainer.train_dataset] == marked
    args = sft_config(tmp_path / "c", ALL_TURNS, seed=0, device="cpu", all_turns=True, rendered_turns=True)
    rows = prepared_rows(AutoTokenizer.from_pretrained(base), [generation(), critic()], args, all_turns=True)
    assert [(row["input_ids"], row["labels"]) for row in rows] == marked  # concurrent training's preparation


@pytest.mark.slow
def test_a_mistral_template_trains_on_every_assistant_turn(tmp_path):
    """configs/paper.yaml's setting: Mistral's template (no markers) with critic_loss=all_turns. The loss is on
    each assistant turn's content and the end-of-sequence token that closes it."""
    base = checkpoint_with(tmp_path, MISTRAL_TEMPLATE, "mistral")
    check_critic_loss(base, ALL_TURNS)
    tok = AutoTokenizer.from_pretrained(base)
    trainer = sft_trainer(base, [critic()], tmp_path / "scratch", ALL_TURNS, device="cpu")
    [row] = trainer.train_dataset
    runs = loss_runs(row["input_ids"], row["labels"], tok)
    assert [text for _, text in runs] == [A1 + tok.eos_token, A2 + tok.eos_token]
    assert all(before.endswith("]") for before, _ in runs)  # right after "[/INST]"
    result = finetune(base, [critic(pid=f"p{i}") for i in range(4)], tmp_path / "out", ALL_TURNS, device="cpu")
    assert result.steps == 1 and result.train_loss is not None and result.train_loss > 0


def test_a_template_that_rewrites_earlier_turns_is_refused_before_any_compute(tmp_path):
    """A template whose rendering of a conversation's beginning depends on what follows (here: it opens with the
    number of messages) gives no stable assistant spans: refused, as a template with no chat template at all."""
    copy = tmp_path / "rewrites"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):  # no weights: nothing may load them
        shutil.copy(default_checkpoint() / name, copy / name)
    (copy / "chat_template.jinja").write_text("{{ messages | length }}" + stripped_template())
    with pytest.raises(
        ValueError,
        match=r"critic_loss=all_turns .* renders the conversation before assistant turn 1 differently.*"
        r"use train\.critic_loss=final",
    ):
        check_critic_loss(str(copy), ALL_TURNS)
    for fine in (FINAL, ALL_TURNS.model_copy(update={"roles": "generation"})):
        check_critic_loss(str(copy), fine)  # no critic trains on every turn: nothing to refuse
    check_critic_loss(str(copy), ALL_TURNS, rounds=1)  # a single round has no critic data
    # finetune refuses it too, before loading any weights (the copy has none)
    with pytest.raises(ValueError, match="critic_loss=all_turns"):
        finetune(str(copy), [critic()], tmp_path / "out", ALL_TURNS, device="cpu")
    with pytest.raises(ValueError, match="critic_loss=all_turns"):  # a shared model's mix of single and multi turn
        check_critic_loss(str(copy), ALL_TURNS.model_copy(update={"shared": True}))


def test_a_template_whose_generation_prompt_differs_from_its_assistant_turns_is_refused_with_that_reason(tmp_path):
    """An R1-style template prompts an answer with '<|assistant|><think>' but renders an assistant turn without the
    tag: refused (a model trained on the rendered turns would be prompted otherwise), and the message says so."""
    copy = tmp_path / "think"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(default_checkpoint() / name, copy / name)
    template = stripped_template().replace(
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}",
        "{% if add_generation_prompt %}{{ '<|assistant|>\n<think>' }}",
    )
    assert template != stripped_template()
    (copy / "chat_template.jinja").write_text(template)
    with pytest.raises(ValueError, match="generation prompt is not how it opens assistant turn 1"):
        check_critic_loss(str(copy), ALL_TURNS)
