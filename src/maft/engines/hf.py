"""Generation with transformers + PEFT: one base model in memory, one LoRA adapter per agent role.

All requests of a call are batched: grouped by sampling settings, sorted by prompt length, left-padded,
and requests for different adapters share a batch through PEFT's mixed-adapter inference
(``adapter_names``; ``None`` is the base model). Decoding keeps keys and values in
:class:`~maft.engines.kv_cache.GrowingCache` (written in place, not copied every step) where the model's
layers all attend to the whole sequence.

Sampling is batch-invariant. Each request has its own seed (:func:`~maft.engines.base.request_seeds`: the
call's seed, the request's content and its occurrence number among identical requests). A token is drawn
by the Gumbel-max trick (:class:`GumbelMaxSampler`): the logits are divided by the temperature, cut to the
top-p nucleus (no top-k), and the token with the largest logit plus Gumbel noise is taken, greedily. The
noise of token ``t`` at decoding step ``k`` (the k-th generated token) of a request seeded ``s`` is a pure
function of ``(s, k, t)``, a counter-based hash (splitmix64) computed on the model's device; no random
generator state is used. So a request's text depends on its own seed and logits only, not on the batch
size, on which requests share its batch or on their order: ``batch_size`` is an execution setting that a
resumed run may change. (Up to floating point: a batch's shape can move logits in the last bits, which
could flip a near tie, as it can for greedy decoding.) ``temperature=0`` decodes greedily, without noise.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.progress import Progress
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
)
from transformers.utils import logging as hf_logging

from maft.agents import Agents, saved_kind
from maft.engines.base import Generation, Request, Sampling, Score, request_seeds
from maft.engines.kv_cache import HEADROOM, continues_generation, growing_cache_for
from maft.engines.prefix_cache import Kept, PrefixStore

if TYPE_CHECKING:
    from maft.agents import AdapterFor

# peft calls a transformers property that is deprecated in transformers 5; harmless, and not the user's to fix
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# transformers 5.24 renamed generate's past_key_values to cache (the old name works until 6, which maft excludes);
# the old name is the one every transformers 5 accepts
warnings.filterwarnings("ignore", message="`past_key_values` is deprecated.*", category=FutureWarning)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch

#: Below this many parameters, agents' adapters are merged into copies of the model by default: the
#: per-layer cost of unmerged LoRA dominates a small model's generation (2.5x slower for the tiny model
#: on CPU), while the copies cost little memory. Larger models keep one base and mixed-adapter batches.
MERGE_BELOW = 200_000_000

#: Requests per batch when none is given: a small model's decoding step costs mostly its fixed overhead
#: (generate's loop, one kernel launch per layer), so wider batches pay off (the tiny model's held-out debate
#: on a 2-core CPU: 19-20 s at 512 against 24-26 s at 128, the same texts); a large one's key/value cache
#: grows with the batch, so it keeps 128. Scoring batches stay at most 128 either way (:meth:`HFEngine.score`).
SMALL_MODEL_BATCH, BATCH = 512, 128


_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment and multipliers
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """``x`` modulo 2^64 as a signed 64-bit integer (torch has no full unsigned 64-bit arithmetic)."""
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps modulo 2^64, as in uint64)."""
    z = (z ^ _shr(z, 30)) * _signed(_MIX1)
    z = (z ^ _shr(z, 27)) * _signed(_MIX2)
    return z ^ _shr(z, 31)


def uniform_noise(seeds: torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), one per element of ``seeds`` and ``tokens`` broadcast together: a pure function of
    (seed, step, token) that never looks at any other element.

    With splitmix64's finaliser ``mix`` and increment ``G`` (all modulo 2^64): a seed's key at ``step`` is
    ``mix(seed + mix((step + 1) * G))``, token t's bits are ``mix(key + (t + 1) * G)`` (splitmix64's stream
    for that key), and their top 53 bits give ``(bits + 0.5) / 2^53`` (23 bits in float32 on devices
    without float64)."""
    device = seeds.device
    step_key = _mix64(torch.tensor(_signed((step + 1) * _GOLDEN), dtype=torch.long, device=device))
    keys = _mix64(seeds.to(torch.long) + step_key)
    z = _mix64(keys + (tokens.to(torch.long) + 1) * _signed(_GOLDEN))
    if device.type == "mps":  # no float64 there: 23 bits, exact in float32
        return (_shr(z, 41).to(torch.float32) + 0.5) * 2.0**-23
    return (_shr(z, 11).to(torch.float64) + 0.5) * 2.0**-53


def gumbel_noise(seeds: torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` from :func:`uniform_noise`."""
    return -torch.log(-torch.log(uniform_noise(seeds, step, tokens)))


#: The most likely tokens in which each row's top-p nucleus is looked for first (:func:`nucleus`).
NUCLEUS_CANDIDATES = 16


def nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Each row's top-p nucleus as a mask: the most likely tokens, in order, each kept while the probability of the
    tokens before it is below ``top_p`` (the fewest most likely tokens whose probabilities reach ``top_p``; the
    first always). The rule of transformers' ``TopPLogitsWarper``, computed from the top instead of the bottom: the
    same tokens up to rounding at the edge and, where tokens of exactly equal probability straddle it, the choice
    among them. The nucleus is looked for among the :data:`NUCLEUS_CANDIDATES` most
    likely tokens (a partial top-k, about 3x faster than sorting the embedded model's 418-token vocabulary, which
    the decoding step of a 300-row batch spent 2 ms on, on a 2-core CPU); a row whose candidates hold less than
    ``top_p`` sorts all its tokens. Either way, a kept token's mass before it is the same sum of the same terms."""
    probs = scores.float().softmax(-1)
    top, index = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]))
    total = top.cumsum(-1)
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, index, total - top < top_p)
    short = (total[:, -1] < top_p).nonzero().squeeze(-1)  # the nucleus may reach past the candidates
    if len(short):
        ranked, order = probs[short].sort(-1, descending=True)
        full = torch.zeros_like(ranked, dtype=torch.bool).scatter_(-1, order, ranked.cumsum(-1) - ranked < top_p)
        keep[short] = full
    return keep


class GumbelMaxSampler(LogitsProcessor):
    """Sampling as a logits processor for greedy decoding: temperature, top-p, then Gumbel noise.

    ``argmax(logits / T + g)`` with ``g`` standard Gumbel draws a token from ``softmax(logits / T)``
    restricted to the nucleus (tokens cut by top-p stay at -inf). ``g`` is :func:`gumbel_noise` of the row's
    seed, the decoding step (the sequence length minus ``prompt_width``, the padded prompt's width) and the
    token id, so a row's draws depend on nothing else in the batch. Noise is computed only for tokens still
    in the running when they are few (a top-p nucleus); being a pure function, it is the same either way."""

    def __init__(
        self,
        seeds: Sequence[int],
        prompt_width: int,
        temperature: float,
        top_p: float,
        device: torch.device | str = "cpu",
    ) -> None:
        if temperature <= 0:
            raise ValueError("GumbelMaxSampler samples; temperature 0 is greedy decoding without it")
        self.seeds = torch.tensor(list(seeds), dtype=torch.long, device=device)
        self.prompt_width = prompt_width
        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(float(temperature))] if temperature != 1 else [])
        self.top_p = float(top_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self.warpers(input_ids, scores)
        step = input_ids.shape[1] - self.prompt_width
        seeds = self.seeds.to(scores.device)
        if self.top_p < 1:
            kept = nucleus(scores, self.top_p)
            scores = scores.masked_fill(~kept, float("-inf"))
        else:
            kept = scores > float("-inf")
        if int(kept.sum()) > scores.numel() // 4:  # most tokens in the running: noise for all
            tokens = torch.arange(scores.shape[-1], device=scores.device)
            return scores + gumbel_noise(seeds[:, None], step, tokens[None, :]).to(scores.dtype)
        rows, cols = kept.nonzero(as_tuple=True)
        out = torch.full_like(scores, float("-inf"))
        out[rows, cols] = scores[rows, cols] + gumbel_noise(seeds[rows], step, cols).to(scores.dtype)
        return out


def cpu_threads() -> int:
    """Cores this process may use (respects affinity masks and container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def end_tokens(model: torch.nn.Module, tokenizer) -> list[int]:
    """The tokens that end a turn: the model's generation config's ``eos_token_id`` (one id or a list: Llama 3's
    ``<|eot_id|>``, Phi-3's ``<|end|>``, Gemma's ``<end_of_turn>`` are there, not in the tokenizer) and the
    tokenizer's end-of-sequence token, as vLLM and ``transformers serve`` stop at either."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ids = [] if ids is None else [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, int(tokenizer.eos_token_id))
    return ids


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class HFEngine:
    """A Hugging Face causal LM with a chat template, plus named PEFT adapters."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
        merge_adapters: bool | None = None,
        prefix_cache_gb: float = 2.0,
    ) -> None:
        from maft.tiny import default_checkpoint

        hf_logging.disable_progress_bar()
        self.model_name = str(model if model is not None else default_checkpoint())
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or cpu_threads())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{self.model_name} has no chat template; maft drives models through apply_chat_template")
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
        self.model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=torch_dtype).to(self.device).eval()
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.end_ids = end_tokens(self.model, self.tokenizer)  # a generation stops at the first of these
        self.batch_size = batch_size or (SMALL_MODEL_BATCH if self.num_parameters < MERGE_BELOW else BATCH)
        self.merge_adapters = self.num_parameters < MERGE_BELOW if merge_adapters is None else merge_adapters
        self.adapters: dict[str, str] = {}  # name -> path, PEFT adapters on the shared base model
        self.full_models: dict[str, torch.nn.Module] = {}  # name -> a fully finetuned model of its own
        self.sources: dict[str, str] = {}  # agent name -> the path it was loaded from by serve()
        # finished rows' keys and values, reused by later prompts that start with them (maft.engines.prefix_cache)
        self.prefixes = PrefixStore(int(prefix_cache_gb * 2**30)) if prefix_cache_gb > 0 else None
        self._calls = 0

    # -- adapters ---------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a PEFT adapter saved at ``path`` under ``name`` (replacing one of the same name)."""
        from peft import PeftModel

        if name == BASE:
            raise ValueError(f"{BASE!r} is reserved for the base model")
        if saved_kind(Path(path), missing_ok=True) != "adapter":
            raise FileNotFoundError(f"no PEFT adapter at {path} (adapter_config.json missing)")
        if isinstance(self.model, PeftModel):
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()
        self.full_models.pop(name, None)
        self.adapters[name] = str(path)
        if self.prefixes is not None:
            self.prefixes.clear()

    def load_agent(self, name: str, path: str | Path) -> None:
        """Load an agent saved by training: a PEFT adapter (merged into a copy of the model when
        ``merge_adapters``, else served unmerged from the shared base), or a full checkpoint."""
        from peft import PeftModel

        if saved_kind(Path(path)) == "adapter":
            if not self.merge_adapters:
                self.load_adapter(name, path)
                return
            fresh = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=self.model.dtype)
            model = PeftModel.from_pretrained(fresh, str(path)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=self.model.dtype)
        if name in self.adapters:
            self.model.delete_adapter(name)
            del self.adapters[name]
        self.full_models[name] = model.to(self.device).eval()
        if self.prefixes is not None:
            self.prefixes.clear()

    @property
    def agents(self) -> list[str]:
        return sorted([*self.adapters, *self.full_models])

    def serve(self, agents: Agents) -> AdapterFor:
        """Load ``agents`` (each role under its own name; one already loaded from the same path is kept)."""
        for role, path in agents.models.items():
            if self.sources.get(role) != str(path):
                self.load_agent(role, path)
                self.sources[role] = str(path)
        return agents.answerer

    def release(self) -> None:
        """Finetuning runs beside the loaded model: only the prefix store's keys and values are given back."""
        if self.prefixes is not None:
            self.prefixes.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Nothing to stop: the model lives in this process."""

    can_score = True

    #: Tokens per ``generate`` call; rows that have ended leave the batch between calls (:meth:`_generate_batch`).
    SEGMENT = 16

    # -- generation -------------------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, requests: Sequence[Request], *, seed: int = 0, progress: bool | str = False) -> list[Generation]:
        """Generate for all ``requests`` (in order). Each request is sampled with its own seed
        (``request_seeds(requests, seed)``), so its text does not depend on the batch size or on the
        other requests of the call; identical requests in one call draw different samples."""
        self._check_adapters(requests)
        self._calls += 1
        if self.prefixes is not None:
            self.prefixes.begin(self._calls)
        prompts = [self.prompt_ids(r.messages) for r in requests]
        seeds = request_seeds(requests, seed)
        batches = self._batches(requests, [len(p) for p in prompts], by_sampling=True)
        out: list[Generation | None] = [None] * len(requests)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(progress if isinstance(progress, str) else "generate", total=len(requests))
            for sampling, full, idx in batches:
                assert sampling is not None  # generation batches are grouped by their sampling settings
                adapters = [requests[i].adapter for i in idx] if full is None else None
                texts, counts, ended = self._generate_batch(
                    [prompts[i] for i in idx],
                    adapters,
                    sampling,
                    full,
                    seeds=[seeds[i] for i in idx],
                    to_store=[requests[i].continued for i in idx],
                )
                for i, text, n, end in zip(idx, texts, counts, ended):
                    out[i] = Generation(
                        text=text,
                        prompt_tokens=len(prompts[i]),
                        completion_tokens=n,
                        truncated=not end and n >= sampling.max_new_tokens,
                    )
                bar.update(task, advance=len(idx))
        return out  # type: ignore[return-value]

    def score(
        self, requests: Sequence[Request], completions: Sequence[str], *, progress: bool | str = False
    ) -> list[Score]:
        """Log-likelihood of each completion (then the end-of-sequence token) under the request's agent."""
        if len(requests) != len(completions):
            raise ValueError(f"{len(requests)} requests but {len(completions)} completions")
        self._check_adapters(requests)
        eos = self.tokenizer.eos_token_id
        rows = []
        for r, text in zip(requests, completions):
            prompt = self.prompt_ids(r.messages)
            completion = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
            rows.append((prompt, completion))
        # at most BATCH rows: a scoring pass holds full fp32 logits (rows x length x vocabulary, twice), which a
        # small model with a large vocabulary would make huge at the small-model generation batch
        size = min(self.batch_size, BATCH)
        batches = self._batches(requests, [len(p) + len(c) for p, c in rows], by_sampling=False, size=size)
        out: list[Score | None] = [None] * len(requests)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task(progress if isinstance(progress, str) else "score", total=len(requests))
            for _, full, idx in batches:
                adapters = [requests[i].adapter for i in idx] if full is None else None
                for i, logprob in zip(idx, self._score_batch([rows[i] for i in idx], adapters, full)):
                    out[i] = Score(logprob=logprob, tokens=len(rows[i][1]))
                bar.update(task, advance=len(idx))
        return out  # type: ignore[return-value]

    def _batches(
        self, requests: Sequence[Request], lengths: Sequence[int], *, by_sampling: bool, size: int | None = None
    ) -> list[tuple[Sampling | None, str | None, list[int]]]:
        """Request indices in batches of at most ``size`` (default ``batch_size``), as (sampling, full model, indices).

        Adapters share the base model's batches (full model None); a fully finetuned agent is a model of
        its own. Generation also groups by sampling settings. Longest first: memory errors show early."""
        groups: dict[tuple[Sampling | None, str | None], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.sampling if by_sampling else None, r.adapter if r.adapter in self.full_models else None)].append(
                i
            )
        batches = []
        for (sampling, full), idx in groups.items():
            idx.sort(key=lambda i: lengths[i], reverse=True)
            step = size or self.batch_size
            batches += [(sampling, full, idx[s : s + step]) for s in range(0, len(idx), step)]
        return batches

    def _model(self, full: str | None, adapters: list[str | None] | None) -> tuple[torch.nn.Module, dict]:
        """The model that serves a batch, and the keyword naming each row's adapter in a mixed batch."""
        if full is not None:
            return self.full_models[full], {}
        if not self.adapters:
            return self.model, {}
        return self.model, {"adapter_names": [a if a is not None else BASE for a in adapters or []]}

    @torch.inference_mode()
    def _score_batch(
        self, rows: list[tuple[list[int], list[int]]], adapters: list[str | None] | None, full: str | None
    ) -> list[float]:
        """Sum of completion-token log-probabilities; sequences right-padded (positions start at 0), without an
        attention mask: causal attention never reaches the padding after a row's tokens, and skips the score
        matrix's upper triangle where a mask would make it compute every block."""
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for b, (p, c) in enumerate(rows):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
        ids = ids.to(self.device)
        model, kwargs = self._model(full, adapters)
        logits = model(input_ids=ids, **kwargs).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out = []
        for b, (p, c) in enumerate(rows):
            out.append(float(logprobs[b, len(p) - 1 : len(p) + len(c) - 1].sum()))
        return out

    def _check_adapters(self, requests: Sequence[Request]) -> None:
        for r in requests:
            if r.adapter is not None and r.adapter not in self.adapters and r.adapter not in self.full_models:
                raise KeyError(f"unknown adapter {r.adapter!r}; loaded: {self.agents or 'none'}")

    @torch.inference_mode()
    def _generate_batch(
        self,
        prompts: list[list[int]],
        adapters: list[str | None] | None,
        sampling: Sampling,
        full: str | None = None,
        *,
        seeds: Sequence[int] | None = None,
        to_store: Sequence[bool] | None = None,
    ) -> tuple[list[str], list[int], list[bool]]:
        """Texts, generated token counts, and whether each ended with an end-of-turn token (:func:`end_tokens`).
        ``seeds``: each row's sampling seed (needed unless greedy). ``to_store``: the rows whose keys and values go to
        the prefix store when they end (their requests are ``continued``). Where the prompts start with kept rows'
        tokens, the cache starts filled with those rows' keys and values (:mod:`maft.engines.prefix_cache`).

        Decoding runs in segments of ``SEGMENT`` tokens, each a ``generate`` call that continues from the
        previous one's cache; between segments the rows that have ended leave the batch and its cache.
        (``generate`` alone keeps every row until the longest ends: in the default run's debates that
        is 20-45% of the attention's reads.) A row's tokens do not depend on the segments: its sampling
        noise is keyed by its seed and decoding step, and processors see the whole sequence so far. One
        call decodes the whole batch where no row can end early (``ignore_eos``) or where the model's
        generation config makes its own cache (:func:`~maft.engines.kv_cache.continues_generation`)."""
        tok = self.tokenizer
        if not sampling.greedy and (seeds is None or len(seeds) != len(prompts)):
            raise ValueError("sampling needs one seed per prompt")
        enc = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        width = ids.shape[1]
        model, names = self._model(full, adapters)
        cache = growing_cache_for(model, width + sampling.max_new_tokens)
        # which model computed each row's keys and values (the key its finished rows are kept under)
        models = [full] * len(prompts) if full is not None else [a or BASE for a in adapters or [None] * len(prompts)]
        to_keep = list(to_store) if to_store is not None else [False] * len(prompts)
        # the prefix store serves and keeps only our own cache (its layers hold whole sequences)
        prefixing = self.prefixes is not None and cache is not None
        if prefixing:  # start from kept prefixes where the prompts share them
            assert self.prefixes is not None and cache is not None
            reused = self.prefixes.prefill(
                models, prompts, width, min(width + HEADROOM, width + sampling.max_new_tokens)
            )
            if reused is not None:
                cache.adopt(*reused)
        ends = set(self.end_ids)
        rows = list(range(len(prompts)))  # the prompt each row of the running batch answers
        new: list[list[int]] = [[] for _ in prompts]
        ended = [False] * len(prompts)
        # one generate call where no row ends early, or where generate cannot continue from a cache of ours
        one_call = sampling.ignore_eos or not continues_generation(model)
        segment = sampling.max_new_tokens if one_call else self.SEGMENT
        while rows and len(new[rows[0]]) < sampling.max_new_tokens:
            steps = min(segment, sampling.max_new_tokens - len(new[rows[0]]))
            kwargs = self._decoding_kwargs(sampling, steps, width, [seeds[r] for r in rows] if seeds else None)
            row_names = {"adapter_names": [names["adapter_names"][r] for r in rows]} if names else {}
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                past_key_values=cache,
                return_dict_in_generate=True,
                **kwargs,
                **row_names,
            )
            # the output's field is cache from transformers 5.24, past_key_values before (None: no cache used)
            cache = getattr(out, "cache" if "cache" in out.__dataclass_fields__ else "past_key_values", None)
            part = out.sequences[:, ids.shape[1] :]
            keep = []
            for j, (r, tokens) in enumerate(zip(rows, part.tolist())):
                end = None if sampling.ignore_eos else next((k for k, t in enumerate(tokens) if t in ends), None)
                if end is not None:
                    new[r] += tokens[: end + 1]
                    ended[r] = True
                else:  # running: every token of the segment is its own (generate stops early only when all end)
                    new[r] += tokens
                    keep.append(j)
            ids, mask = out.sequences, torch.cat([mask, torch.ones_like(part)], dim=1)
            if prefixing:
                # the rows that ended, or every row when the running ones have their last token
                last = not keep or len(new[rows[keep[0]]]) >= sampling.max_new_tokens
                kept = set(keep)
                leaving = range(len(rows)) if last else [j for j in range(len(rows)) if j not in kept]
                continued = [j for j in leaving if to_keep[rows[j]]]
                if continued:
                    self._keep(cache, prompts, new, models, rows, width, continued)
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long, device=ids.device)
                ids, mask = ids[index], mask[index]
                if keep and cache is not None:
                    cache.batch_select_indices(index)
                rows = [rows[j] for j in keep]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts], [len(n) for n in new], ended

    def _keep(
        self,
        cache,
        prompts: list[list[int]],
        new: list[list[int]],
        models: list[str],
        rows: list[int],
        width: int,
        leaving: Sequence[int],
    ) -> None:
        """Keep the running batch's rows ``leaving`` (indices into ``rows``) in the prefix store: each row's tokens
        (prompt and generated) and the keys and values the cache holds for them (after its left padding, up to
        the last position computed; the positions past an end token hold padding and are not kept)."""
        assert self.prefixes is not None
        filled, layers = cache.get_seq_length(), cache.layers
        for j in leaving:
            r = rows[j]
            pad = width - len(prompts[r])
            tokens = prompts[r] + new[r]
            n = min(filled - pad, len(tokens))
            self.prefixes.keep(
                self._calls,
                models[r],
                Kept(
                    ids=tokens,
                    keys=[layer.keys[j, :, pad : pad + n].clone() for layer in layers],
                    values=[layer.values[j, :, pad : pad + n].clone() for layer in layers],
                    prompt_length=len(prompts[r]),
                ),
            )

    def _decoding_kwargs(self, sampling: Sampling, steps: int, width: int, seeds: list[int] | None) -> dict:
        """``generate``'s keywords for ``steps`` tokens of ``sampling`` (``width``: the padded prompt's)."""
        tok = self.tokenizer
        # transformers decodes greedily and adds no sampling warpers of its own (do_sample=False; the
        # model's generation config's temperature/top_p/top_k are overridden, so it warns of nothing)
        kwargs: dict = {
            "max_new_tokens": steps,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": self.end_ids,
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if sampling.ignore_eos:  # exactly max_new_tokens each (one segment)
            kwargs["min_new_tokens"] = steps
        if not sampling.greedy:
            assert seeds is not None
            sampler = GumbelMaxSampler(seeds, width, sampling.temperature, sampling.top_p, self.device)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        return kwargs
