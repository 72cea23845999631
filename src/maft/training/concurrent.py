"""Train several roles' LoRA adapters together (``execution.concurrent_training``): one process, one copy of
the base model, each step one forward and one backward over the concatenated mini-batches of the roles
still training, every row through its own role's adapter.

The adapters' parameters are disjoint, so the gradient of the sum of the roles' losses with respect to one
adapter is the gradient of that role's own loss: each role follows the trajectory :func:`maft.training.sft.finetune`
gives it when it trains alone, up to floating-point rounding (tests/test_concurrent_training.py checks the
gradients and the final weights against it). To make that so, each role keeps what its own TRL trainer would
have:

- its rows: TRL's own dataset preparation (``SFTTrainer._prepare_dataset``, the same tokens and the same
  ``-100`` labels, completion-only or assistant-only as ``train.critic_loss`` says);
- its mini-batch sequence: the Trainer's sampler (accelerate's ``SeedableRandomSampler``, seeded with the role's
  seed plus the epoch), ``train.batch_size`` rows per mini-batch, ``gradient_accumulation_steps`` mini-batches per
  optimizer step (fewer for the last step of an epoch), ``ceil(epochs * steps per epoch)`` steps;
- its LoRA init: the role's seed set right before its adapter is created, as TRL does (or its previous adapter);
- its loss: the negative log-likelihood of its label tokens in the step's mini-batches, divided by their count
  (the Trainer's ``num_items_in_batch``), through TRL's fused LM head;
- its optimizer: the Trainer's (AdamW, fused where torch has it) and learning-rate scheduler, one of each per role,
  its gradient norm clipped to ``max_grad_norm`` on its own parameters.

Routing (:class:`Router`): in a forward over the mini-batches of several roles, one after another in the batch,
every LoRA layer adds to the base output of each role's rows that role's adapter's update, as PEFT's forward does
for its one active adapter (for equal mini-batches, all roles' updates in one pair of batched products); the base
layers see the whole batch. PEFT's own mixed-adapter batch (``adapter_names``)
computes the same but is for inference (``PeftModel.forward`` refuses it in training mode) and gathers and
scatters rows by index lists, which made the backward pass slower. Roles whose mini-batches differ much in length
(short generation data, long critic conversations) would pad each other: within one step, mini-batches are
grouped by length, and a group shares one forward as long as its padded size stays within :data:`MERGE_SLACK` of
its parts' own, so that the generation roles share one forward and the critic roles another (the step is still
one process, one base copy, one loop; :func:`merge_groups`).

A role with fewer steps drops out when done: its adapter is saved and reported at once (``on_done``), so a crash
keeps it. A role with no examples keeps its starting weights, as with :func:`~maft.training.sft.finetune`.
With tracking (``RoleRun.tracking``, ``execution.report_to``), each role logs its own ``train/loss`` and
``train/learning_rate`` every optimizer step and ``train/train_loss`` at its end, as its TRL trainer would
(:mod:`maft.tracking`). Refused: ``method=full`` (a model per role), a quantized base, and ``lora_dropout > 0``
(a concatenated batch draws its dropout masks in another order, so the adapters would differ by more than
rounding).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maft.config import TrainConfig
from maft.data.agent_data import Example
from maft.tracking import MetricsLogger, Tracking
from maft.training.memory import model_dropout
from maft.training.precision import resolve_bf16
from maft.training.sft import (
    TrainResult,
    _cpu_attention,
    _dtype,
    _quiet,
    _refusal,
    _tokenizer,
    attend_causally,
    finetune,
    lora_config,
    loss_on_all_turns,
    sft_config,
    sft_rows,
    template_problem,
    turns_by_rendering,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from trl import SFTConfig

#: A group of mini-batches shares one forward while its padded tokens (rows x longest row) stay within this factor
#: of the tokens its mini-batches would pad to alone.
MERGE_SLACK = 1.25

#: (role, steps done, total steps) -> None
RoleStep = Callable[[str, int, int], None]
#: (role, its result) -> None, as soon as the role's adapter is saved
RoleDone = Callable[[str, TrainResult], None]


@dataclass(frozen=True)
class RoleRun:
    """One role of a concurrent job: its examples, where it starts from (None: the base) and where it writes."""

    role: str
    examples: Sequence[Example]
    out_dir: Path
    init_from: Path | None = None
    seed: int = 0
    tracking: Tracking | None = None  # where its losses are logged (maft.tracking)


@dataclass
class _Role:
    run: RoleRun
    args: SFTConfig
    rows: list[dict]  # input_ids and labels, as TRL prepared them
    steps: list[list[list[int]]]  # optimizer steps -> mini-batches -> row indices
    targets: list[int] = field(default_factory=list)  # label tokens per row (those after the first position)
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    loss: Any = 0.0  # the sum of its mini-batch losses (the Trainer's tr_loss)
    done: int = 0
    seconds: float = 0.0
    logger: MetricsLogger | None = None  # its losses' tracking (RoleRun.tracking)
    logged: float = 0.0  # ``loss`` when last logged

    @property
    def name(self) -> str:
        return self.run.role


def check_concurrent(cfg: TrainConfig) -> None:
    """Refuse the settings under which concurrent training is not the sequential one (module docstring)."""
    if cfg.method != "lora":
        raise ValueError(
            "concurrent training trains LoRA adapters on one base model; train.method=full has a model per role"
        )
    if getattr(cfg, "quantization", "none") != "none":
        raise ValueError("concurrent training does not support a quantized base (train.quantization)")
    if cfg.lora_dropout > 0:
        raise ValueError(
            "concurrent training needs train.lora_dropout=0: a concatenated batch draws its dropout masks in another "
            "order, so the adapters would differ from those trained one by one"
        )


def prepared_rows(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    args: SFTConfig,
    all_turns: bool,
) -> list[dict]:
    """The rows (``input_ids``, ``labels``) :func:`~maft.training.sft.sft_trainer` trains ``examples`` on: TRL's own
    preparation, run without building a trainer (which would load a model). Whole conversations without TRL's
    assistant-only loss come tokenized with their assistant masks (``sft_config``'s ``rendered_turns``)."""
    from datasets import Dataset
    from trl import SFTTrainer
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    shell = SFTTrainer.__new__(SFTTrainer)  # what _prepare_dataset reads, set as SFTTrainer.__init__ sets it
    shell._tokenizer = tokenizer
    shell.completion_only_loss = args.completion_only_loss
    markers = has_generation_markers(tokenizer.chat_template)
    shell.chat_template = get_training_chat_template(tokenizer) if args.assistant_only_loss and not markers else None
    data = shell._prepare_dataset(
        Dataset.from_list(
            sft_rows(examples, all_turns, tokenizer if all_turns and not args.assistant_only_loss else None)
        ),
        tokenizer,
        args,
        args.packing,
        None,
        "train",
    )
    return [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in data]


def batch_schedule(n: int, args: SFTConfig) -> list[list[list[int]]]:
    """The Trainer's mini-batches over ``n`` rows, as row indices grouped by optimizer step: each epoch a fresh
    permutation (accelerate's seedable sampler at ``data_seed + epoch``) cut into ``per_device_train_batch_size``
    rows, ``gradient_accumulation_steps`` of them per step, ``ceil(num_train_epochs * steps per epoch)`` steps."""
    from accelerate.data_loader import SeedableRandomSampler

    if n == 0:
        return []
    size, accumulate = args.per_device_train_batch_size, args.gradient_accumulation_steps
    batches_per_epoch = math.ceil(n / size)
    steps_per_epoch = max(batches_per_epoch // accumulate + int(batches_per_epoch % accumulate > 0), 1)
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    seed = args.data_seed if args.data_seed is not None else args.seed
    sampler = SeedableRandomSampler(range(n), data_seed=seed)
    steps: list[list[list[int]]] = []
    epoch = 0
    while len(steps) < total:
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i : i + size] for i in range(0, n, size)]
        steps += [batches[i : i + accumulate] for i in range(0, len(batches), accumulate)]
        epoch += 1
    return steps[:total]


def merge_groups(parts: Sequence[tuple[Any, int, int]]) -> list[list[Any]]:
    """``parts``: (key, rows, longest row) of the mini-batches of one step. The groups that share a forward: by
    length, each joins the group before it while the group's padded size stays within :data:`MERGE_SLACK` of the
    sizes its parts pad to alone."""
    groups: list[list[Any]] = []
    rows = own = 0
    for key, n, length in sorted(parts, key=lambda p: p[2]):
        if groups and (rows + n) * length <= MERGE_SLACK * (own + n * length):
            groups[-1].append(key)
            rows, own = rows + n, own + n * length
        else:
            groups.append([key])
            rows, own = n, n * length
    return groups


class Router:
    """Runs each block of consecutive rows of a batch through its role's adapter, in every LoRA layer of ``model``:
    ``with router([(role, rows), ...]):`` around a forward and its backward (gradient checkpointing recomputes the
    forward there). Outside such a block the layers are PEFT's own.

    A layer adds to its base output each block's ``lora_B(lora_A(dropout(x))) * scaling``, the update PEFT's
    forward adds for its one active adapter, so a row's output is the one it has alone. Where the blocks have the
    same number of rows and every block's role has an adapter in the layer (each step's full mini-batches), the
    layer computes every block's update at once: the input viewed as (blocks, rows x positions, features), the
    roles' ``lora_A`` and ``lora_B`` weights stacked, two batched matrix products (:meth:`_batched`). Otherwise it
    splits the input into views, one pair of products per block, and concatenates the updates. Both are the
    per-role products up to rounding; the batched one launches a handful of kernels per layer instead of a handful
    per role, which a small-batch step on a GPU pays for (on one H200, a 1B-shape concurrent job's training time
    fell from 17.6 s to 13.9 s; README). (PEFT's own mixed-adapter batches, ``adapter_names``, index rows by lists
    and are for inference only.)"""

    def __init__(self, model) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.lora.layer import Linear

        self.blocks: list[tuple[str, int]] | None = None
        for layer in model.modules():
            if not isinstance(layer, LoraLayer):
                continue
            if type(layer) is not Linear or layer.lora_variant:
                raise ValueError(
                    f"concurrent training routes plain LoRA linear layers only, not {type(layer).__name__}"
                )
            layer.forward = functools.partial(self._forward, layer, layer.forward)

    def _forward(self, layer, peft_forward, x, *args, **kwargs):  # the layer's forward from now on
        import torch

        if self.blocks is None:
            return peft_forward(x, *args, **kwargs)
        result = layer.base_layer(x, *args, **kwargs)
        if self._batchable(layer, x):
            return self._batched(layer, [role for role, _ in self.blocks], x, result)
        deltas = []
        for (role, _), rows in zip(self.blocks, x.split([n for _, n in self.blocks]), strict=True):
            if role in layer.lora_A:
                lora_a, lora_b = layer.lora_A[role], layer.lora_B[role]
                rows = lora_a(layer.lora_dropout[role](rows.to(lora_a.weight.dtype)))
                deltas.append(lora_b(rows) * layer.scaling[role])
            else:
                deltas.append(result.new_zeros((len(rows), *result.shape[1:])))
        return (result + torch.cat(deltas)).to(result.dtype)

    def _batchable(self, layer, x) -> bool:
        """Whether the blocks' updates in ``layer`` can be one batched product: several blocks of equal rows that
        make up the batch's first dimension, each role's update two bias-free products (no dropout: it is 0),
        the roles' adapters alike in rank, weight dtype and scaling (a role continuing from an adapter saved with
        other settings takes the per-block path)."""
        import torch

        assert self.blocks is not None
        roles = [role for role, _ in self.blocks]
        if len(roles) < 2 or len({n for _, n in self.blocks}) > 1 or x.shape[0] != sum(n for _, n in self.blocks):
            return False
        if not all(role in layer.lora_A for role in roles):
            return False
        a, b = [layer.lora_A[role] for role in roles], [layer.lora_B[role] for role in roles]
        return (
            all(isinstance(layer.lora_dropout[role], torch.nn.Identity) for role in roles)
            and all(m.bias is None for m in a + b)
            and len({m.weight.shape for m in a}) == 1
            and len({m.weight.shape for m in b}) == 1
            and len({m.weight.dtype for m in a + b}) == 1
            and len({layer.scaling[role] for role in roles}) == 1
        )

    @staticmethod
    def _batched(layer, roles: list[str], x, result):
        """``result`` (the base layer's output) plus the updates of equal blocks of rows of ``x``, block i through
        ``roles[i]``'s adapter, in one go. Outside autocast, the second product adds itself to ``result`` and
        applies the scaling in the same call (``baddbmm_``), so the full-width update is never written on its own,
        nor scaled (its backward scales the thin rank-wide gradients instead). The adapters' weights are read
        directly (no module hooks: fine in this one process, where nothing shards them)."""
        import torch

        a = torch.stack([layer.lora_A[role].weight for role in roles])  # (blocks, r, in)
        b = torch.stack([layer.lora_B[role].weight for role in roles])  # (blocks, out, r)
        rows = x.reshape(len(roles), -1, x.shape[-1])
        autocast = torch.is_autocast_enabled(x.device.type)  # under autocast bmm casts its inputs itself
        if not autocast:
            rows = rows.to(a.dtype)
        low = torch.bmm(rows, a.transpose(1, 2))  # (blocks, rows x positions, r)
        up = b.transpose(1, 2)  # (blocks, r, out)
        base = result.reshape(len(roles), -1, result.shape[-1])
        scaling = layer.scaling[roles[0]]
        if not autocast and base.dtype == low.dtype == up.dtype:
            # in place: the base layer's output is a fresh tensor that its backward does not need. Equal to PEFT's
            # multiply-then-add up to fp32 rounding; not under autocast, where an in-place call is not cast and
            # bf16 would round the sum differently enough to matter (the bf16 gradient test's tolerance)
            return base.baddbmm_(low, up, alpha=scaling).view(result.shape)
        return (result + (torch.bmm(low, up) * scaling).view(result.shape)).to(result.dtype)

    @contextlib.contextmanager
    def __call__(self, blocks: list[tuple[str, int]]) -> Iterator[None]:
        self.blocks = blocks
        try:
            yield
        finally:
            self.blocks = None


def load_together(base_model: str, roles: Sequence[RoleRun], cfg: TrainConfig, device: str = "auto"):
    """One base model with an adapter per role, named after it: its previous adapter, or a fresh one initialized
    after seeding with the role's seed (as TRL seeds before it creates the adapter). Only the adapters train; the
    base carries TRL's fused LM head (per-token log-probabilities without the full logits). ``cfg.bf16`` resolved
    for ``device``: in bf16 on a CPU, attention computes in fp32, as the one-by-one trainer's."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed
    from trl.trainer import add_fused_lm_head

    cfg = resolve_bf16(cfg, device)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=_dtype(cfg))
    if dropout := model_dropout(base):
        raise ValueError(
            f"{base_model} applies dropout {dropout} in training: the roles' concatenated batch would draw its masks "
            "in another order, so the adapters would differ from those trained one by one; set "
            "execution.concurrent_training=false (or leave it unset: it then trains them one by one)"
        )
    attend_causally(base)  # as the one-by-one trainer's model does
    _cpu_attention(base, cfg, device)
    model = None
    for run in roles:
        if run.init_from is not None:
            if model is None:
                model = PeftModel.from_pretrained(base, str(run.init_from), adapter_name=run.role, is_trainable=True)
            else:
                model.load_adapter(str(run.init_from), adapter_name=run.role, is_trainable=True)
        else:
            set_seed(run.seed)
            if model is None:
                model = get_peft_model(base, lora_config(cfg), adapter_name=run.role)
            else:
                model.add_adapter(run.role, lora_config(cfg))
    assert model is not None
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs",))
    for name, param in model.named_parameters():
        param.requires_grad_(any(f".{run.role}." in name for run in roles))
    return model


def role_parameters(model, role: str) -> list[tuple[str, Any]]:
    """The named parameters of ``role``'s adapter."""
    return [(name, p) for name, p in model.named_parameters() if f".{role}." in name]


def decayed_names(model) -> set[str]:
    """The names of the parameters the Trainer applies weight decay to (not biases, not norms), for every role."""
    from torch import nn
    from transformers.trainer_pt_utils import get_parameter_names

    no_decay_patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]  # Trainer's
    return set(get_parameter_names(model, [nn.LayerNorm], no_decay_patterns))


def _optimizer(model, role: _Role, decay: set[str]) -> None:
    """The role's optimizer and scheduler, as the Trainer builds them (its weight-decay groups, ``decay``: from
    :func:`decayed_names`; its optimizer class and arguments; its scheduler with the warmup of ``args``)."""
    from transformers import Trainer, get_scheduler

    args = role.args
    named = role_parameters(model, role.name)
    role.params = [p for _, p in named]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    role.optimizer = optimizer_cls(groups, **kwargs)
    role.scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=role.optimizer,
        num_warmup_steps=args.get_warmup_steps(len(role.steps)),
        num_training_steps=len(role.steps),
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )


def save_adapter(model, role: str, out_dir: Path) -> None:
    """``role``'s adapter alone, as a PEFT adapter directory (``adapter_config.json`` and the weights) in
    ``out_dir``, as :func:`~maft.training.sft.finetune` saves its one adapter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), selected_adapters=[role])
    nested = out_dir / role  # PEFT saves an adapter not named "default" in a folder of its name
    if nested.is_dir():
        for item in nested.iterdir():
            item.replace(out_dir / item.name)
        nested.rmdir()


def step_parts(role: _Role, step: int, micro: int) -> list[int] | None:
    """The row indices of ``role``'s mini-batch ``micro`` of optimizer step ``step`` (None: it has none)."""
    batches = role.steps[step]
    return batches[micro] if micro < len(batches) else None


def forward_backward(model, router, collate, parts: Sequence[tuple[_Role, list[int]]], counts, device, autocast):
    """One forward and one backward over the concatenated mini-batches ``parts`` (a role and its row indices),
    each row through its role's adapter, each role's loss its label tokens' summed negative log-likelihood over
    ``counts[role]`` (the label tokens of its whole optimizer step). Adds each role's loss to ``role.loss`` and
    returns the tokens of each part (the share of the time it is charged)."""
    import torch

    rows = [role.rows[i] for role, indices in parts for i in indices]
    batch = {k: v.to(device) for k, v in collate(rows).items()}
    with router([(role.name, len(indices)) for role, indices in parts]):
        with autocast():
            log_probs = model(**batch, fused_lm_head=True, use_cache=False).log_probs
        nll = -log_probs.float().sum(dim=1)  # outputs in fp32, as accelerate's mixed-precision forward returns them
        total = torch.zeros((), device=device)
        start = 0
        for role, indices in parts:
            loss = nll[start : start + len(indices)].sum() / max(counts[role.name], 1)
            start += len(indices)
            role.loss = role.loss + loss.detach()
            total = total + loss
        total.backward()
    return [sum(len(role.rows[i]["input_ids"]) for i in indices) for role, indices in parts]


def finetune_together(
    base_model: str,
    runs: Sequence[RoleRun],
    cfg: TrainConfig,
    *,
    device: str = "auto",
    on_step: RoleStep | None = None,
    on_done: RoleDone | None = None,
    activation_checkpointing: bool = True,
) -> dict[str, TrainResult]:
    """Train the roles ``runs`` together (module docstring) into their ``out_dir``; each role's result as
    :func:`~maft.training.sft.finetune` would report it, handed to ``on_done`` as soon as the role is saved."""
    start = time.perf_counter()
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    check_concurrent(cfg)
    _quiet()
    cfg = resolve_bf16(cfg, device)
    results: dict[str, TrainResult] = {}

    def finish(role: str, result: TrainResult) -> None:
        results[role] = result
        if on_done:
            on_done(role, result)

    for run in runs:
        if not run.examples:  # keeps its starting weights, exactly as finetune saves them
            empty = finetune(base_model, [], run.out_dir, cfg, init_from=run.init_from, seed=run.seed, device=device)
            finish(run.role, empty)
    runs = [run for run in runs if run.examples]
    if not runs:
        return results
    if results:
        start = time.perf_counter()  # the roles without examples have their own seconds
    tokenizer = _tokenizer(base_model)
    roles: list[_Role] = []
    for run in runs:
        all_turns = loss_on_all_turns(run.examples, cfg)
        if all_turns and (problem := template_problem(tokenizer)):
            raise _refusal(base_model, problem)
        args = sft_config(
            run.out_dir / ".trainer",
            cfg,
            seed=run.seed,
            device=device,
            all_turns=all_turns,
            rendered_turns=all_turns and turns_by_rendering(tokenizer),
            activation_checkpointing=activation_checkpointing,
        )
        rows = prepared_rows(tokenizer, run.examples, args, all_turns)
        role = _Role(run=run, args=args, rows=rows, steps=batch_schedule(len(rows), args))
        role.logger = MetricsLogger(run.tracking) if run.tracking else None
        role.targets = [sum(label != -100 for label in row["labels"][1:]) for row in rows]
        roles.append(role)
    args = roles[0].args
    model = load_together(base_model, runs, cfg, device).to(args.device)
    if args.activation_checkpointing:  # as the one-by-one trainer (execution.activation_checkpointing)
        model.enable_input_require_grads()
        kwargs = dict(args.activation_checkpointing_kwargs or {})
        every, offload = kwargs.pop("every_n_layers", 1), kwargs.pop("offload", False)
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs or None, every_n_layers=every, offload=offload
        )
    model.train()
    decay = decayed_names(model)  # walks the whole model: once, not once per role
    for role in roles:
        _optimizer(model, role, decay)
    router = Router(model)
    collate = DataCollatorForLanguageModeling(
        pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of
    )

    def autocast():
        if args.bf16:
            return torch.autocast(device_type=args.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    names = [role.name for role in roles]
    setup = (time.perf_counter() - start) / len(roles)
    for role in roles:
        role.seconds = setup

    def done(role: _Role) -> None:
        began = time.perf_counter()
        save_adapter(model, role.name, role.run.out_dir)
        role.optimizer = role.scheduler = None
        role.seconds += time.perf_counter() - began
        if role.logger:  # the mean loss, as the Trainer logs it at its end
            if role.done:
                role.logger.log({"train/train_loss": float(role.loss) / role.done}, step=role.done)
            role.logger.close()
        finish(
            role.name,
            TrainResult(
                examples=len(role.run.examples),
                steps=role.done,
                train_loss=float(role.loss) / role.done if role.done else None,
                seconds=role.seconds,
                method=cfg.method,
                bf16=bool(cfg.bf16),
                init=str(role.run.init_from) if role.run.init_from else "base",
                host=socket.gethostname(),
                pid=os.getpid(),
                trained_with=[n for n in names if n != role.name],
            ),
        )

    for role in [r for r in roles if not r.steps]:  # every row lost its labels to truncation: nothing to train
        done(role)
    active = [role for role in roles if role.steps]
    step = 0
    while active:
        counts = {role.name: sum(role.targets[i] for batch in role.steps[step] for i in batch) for role in active}
        for micro in range(max(len(role.steps[step]) for role in active)):
            parts = {role.name: (role, batch) for role in active if (batch := step_parts(role, step, micro))}
            sizes = [
                (name, len(indices), max(len(role.rows[i]["input_ids"]) for i in indices))
                for name, (role, indices) in parts.items()
            ]
            for group in merge_groups(sizes):
                began = time.perf_counter()
                members = [parts[name] for name in group]
                tokens = forward_backward(model, router, collate, members, counts, args.device, autocast)
                seconds = time.perf_counter() - began
                for (role, _), n in zip(members, tokens, strict=True):
                    role.seconds += seconds * n / sum(tokens)
        for role in active:
            began = time.perf_counter()
            if role.args.max_grad_norm and role.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(role.params, role.args.max_grad_norm)
            role.optimizer.step()
            role.scheduler.step()
            role.optimizer.zero_grad(set_to_none=True)
            role.done += 1
            role.seconds += time.perf_counter() - began
            if role.logger:  # this step's loss and the next step's learning rate, as the Trainer logs them
                loss, role.logged = float(role.loss) - role.logged, float(role.loss)
                role.logger.log({"train/loss": loss, "train/learning_rate": role.scheduler.get_last_lr()[0]}, role.done)
            if on_step:
                on_step(role.name, role.done, len(role.steps))
            if role.done == len(role.steps):
                done(role)
        active = [role for role in active if role.done < len(role.steps)]
        step += 1
    return results
