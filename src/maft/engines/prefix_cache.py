"""Prefix caching for in-process generation: a later prompt that starts with an earlier generation's tokens
reuses that generation's keys and values instead of computing them again (what vLLM's and SGLang's automatic
prefix caching do on a server).

In a debate, an agent's round-m prompt is its round-(m-1) prompt and answer followed by the new turn (the
others' answers), so about two thirds of round 2's prompt tokens were already computed in round 1. On the
embedded model on a 2-core CPU, round 2's prefill is about a quarter of a debate's time.

:class:`PrefixStore` keeps, for each finished row whose request is ``continued`` (the debate marks an agent's
requests where the same agent answers the next round), its token ids (prompt and generated tokens) and the
keys and values of as many of them as the decoding cache holds (per layer ``[heads, n, head_dim]``), under the
model that computed them (a merged or fully finetuned agent's name, or an adapter's, or the base). A new batch
looks up, for each prompt, the kept row of the same model that shares the longest prefix of token ids with it.
Causal attention makes a position's keys and values a function of the tokens up to it, so the shared prefix's
are those a fresh prefill computes, up to floating-point rounding (the other batch's shape can move the last
bits, as a change of batch size can; :mod:`maft.engines.hf`).

The batch stays one left-padded block: every row computes the same number of new positions ``new``, the
longest of its uncached suffixes, and reuses ``len(prompt) - new`` cached positions (fewer than it may have
where another row's suffix is longer). The cache handed to ``generate`` has ``width - new`` columns, a row's
reused keys and values right-aligned in it after its padding, so ``generate`` continues from it as it does from
a segment of its own (:meth:`~maft.engines.hf.HFEngine._generate_batch`). A row without a kept prefix (one
the budget left out, say) computes its whole prompt, so its batch, one block, reuses at most what leaves as
many positions to compute: a budget that keeps only some of a round's rows saves little or nothing (tested:
the same texts either way).

Bounded: the rows of the last two engine calls before the current one and of the current one, as many as fit
in ``budget`` bytes (a row that does not fit is not kept); a row leaves once reused (a conversation continues
once). The engine clears the store when it loads an agent, so that a name never refers to older weights, and
when it steps aside for training (``release``). A prompt identical to a kept one is not looked up (it would
reuse all but its last position; a debate never sends one).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(eq=False)  # kept rows compare by identity (their tensors have no truth value)
class Kept:
    """A finished row: its token ids and the keys and values of the first ``len(keys[0][0])`` of them."""

    ids: list[int]
    keys: list[torch.Tensor]  # per layer, [heads, n, head_dim]
    values: list[torch.Tensor]
    prompt_length: int
    model: str = ""  # set when kept: the model that computed it, and the engine call it ended in
    call: int = 0

    @property
    def key(self) -> tuple[str, int, tuple[int, ...]]:
        return self.model, self.prompt_length, tuple(self.ids[: self.prompt_length])

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """Kept rows by model, with lookup by longest shared token prefix (module docstring)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.calls: OrderedDict[int, dict[int, Kept]] = OrderedDict()  # call number -> its rows, by id
        self.index: dict[tuple[str, int, tuple[int, ...]], list[Kept]] = defaultdict(list)
        self.lengths: dict[str, set[int]] = defaultdict(set)  # model -> the prompt lengths kept for it
        self.bytes = 0
        self.reused = self.computed = 0  # prompt tokens reused from / computed past the store, since creation
        self.kept = 0  # rows kept, since creation

    def clear(self) -> None:
        self.calls.clear()
        self.index.clear()
        self.lengths.clear()
        self.bytes = 0

    def begin(self, call: int) -> None:
        """Engine call ``call`` starts: drop the rows of all calls but the two before it (a debate round reuses
        the round before, across a call that summarizes it)."""
        for old in [c for c in self.calls if c < call - 2]:
            self._drop(old)

    def keep(self, call: int, model: str, row: Kept) -> None:
        """Keep ``row``, computed by ``model`` during engine call ``call``, if it fits in the budget beside the
        rows kept so far (none is dropped during a call: the call's later batches may reuse them)."""
        if row.length == 0 or self.bytes + row.bytes > self.budget:
            return
        row.model, row.call = model, call
        self.calls.setdefault(call, {})[id(row)] = row
        self.index[row.key].append(row)
        self.lengths[model].add(row.prompt_length)
        self.bytes += row.bytes
        self.kept += 1

    def _forget(self, row: Kept) -> None:
        """Drop one row (a lookup may still try its prompt length: it finds nothing)."""
        del self.calls[row.call][id(row)]
        self._unindex(row)

    def _drop(self, call: int) -> None:
        for row in self.calls.pop(call).values():
            self._unindex(row)
        self.lengths = defaultdict(set)
        for model, length, _ in self.index:
            self.lengths[model].add(length)

    def _unindex(self, row: Kept) -> None:
        rows = self.index[row.key]
        rows.remove(row)
        if not rows:
            del self.index[row.key]
        self.bytes -= row.bytes

    def longest(self, model: str, prompt: Sequence[int]) -> tuple[Kept | None, int]:
        """The kept row of ``model`` sharing the longest prefix with ``prompt``, and how many of its cached
        positions ``prompt`` can reuse (at most ``len(prompt) - 1``: the last position must be computed for
        its logits)."""
        best, reuse = None, 0
        for length in self.lengths.get(model, ()):
            if length >= len(prompt):
                continue
            for row in self.index.get((model, length, tuple(prompt[:length])), ()):
                n = min(length + shared_prefix(row.ids[length:], prompt[length:]), row.length, len(prompt) - 1)
                if n > reuse:
                    best, reuse = row, n
        return best, reuse

    def prefill(
        self, models: Sequence[str], prompts: Sequence[Sequence[int]], width: int, capacity: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int] | None:
        """For a batch of ``prompts`` left-padded to ``width``: each layer's key and value buffers
        ``[rows, heads, capacity, head_dim]`` whose first ``columns`` positions hold every row's reused keys and
        values right-aligned (zeros where padded), and ``columns``; None when nothing can be reused (a row without
        a kept prefix computes its whole prompt, so the others reuse only what leaves as many positions to
        compute as its prompt has). A row that is reused leaves the store: a continued conversation continues
        once, and its continuation is kept in turn."""
        if not self.calls:
            return None
        found = [self.longest(m, p) for m, p in zip(models, prompts)]
        new = max(len(p) - n for p, (_, n) in zip(prompts, found))
        columns = width - new
        first = next((row for row, _ in found if row is not None), None)
        if first is None or columns <= 0:
            self.computed += sum(len(p) for p in prompts)
            return None
        capacity = max(capacity, width)

        def buffer(t: torch.Tensor) -> torch.Tensor:
            b = t.new_empty((len(prompts), t.shape[0], capacity, t.shape[-1]))
            b[:, :, :columns].zero_()  # padding; the positions past ``columns`` are written before they are read
            return b

        keys, values = [buffer(k) for k in first.keys], [buffer(v) for v in first.values]
        used: dict[int, Kept] = {}
        for b, (prompt, (row, _)) in enumerate(zip(prompts, found)):
            use = max(0, len(prompt) - new)  # a row without a kept prefix has use 0: it is the longest's padding
            self.reused += use
            self.computed += len(prompt) - use
            if row is None or use == 0:
                continue
            used[id(row)] = row
            for layer in range(len(keys)):
                keys[layer][b, :, columns - use : columns] = row.keys[layer][:, :use]
                values[layer][b, :, columns - use : columns] = row.values[layer][:, :use]
        for row in used.values():
            self._forget(row)
        return keys, values, columns
