"""The llama.cpp backend: the shipped GGUF, greedy and streamed, with its KV-cache reuse.

Apart from ``rag.generation`` (the ``Generator`` protocol and the helpers every backend
shares) because it is the bulk of the generation code: prompt rendering with the GGUF's
own chat template, kept prompt prefixes and passage states, ctypes calls into llama.cpp.
``llama_cpp`` itself is imported in the constructor, and ``load_generator`` imports this
module only when it builds this backend, so code that never loads a model never reads it.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from rag.errors import InputError, ModelError
from rag.generation import Message, start_mass, start_token_ids, two_way_softmax, yes_no_token_ids
from rag.models import file_sha256, stamped_sha256
from rag.states import StateStore


class LlamaCppGenerator:
    """The shipped GGUF through llama.cpp: greedy, seeded, streamed.

    Not thread-safe by nature (one KV cache): calls are serialized by a lock, and the
    service's queue keeps them one at a time anyway. llama-cpp-python keeps the KV cache
    of the previous call and only evaluates the tokens after the longest common prefix,
    so prompts sharing a system message or passages start faster; ``yes_probability``
    does the same, so scoring several passages for one question re-reads only the tail.
    """

    keeps_states = True

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        seed: int = 0,
        reuse_cache: bool = True,
        states: StateStore | None = None,
    ) -> None:
        if not model_path.is_file():
            raise ModelError(f"The generator model {model_path} does not exist. Check RAG_GENERATOR_PATH.")
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ModelError(
                "llama-cpp-python is not installed: `pip install llama-cpp-python==0.3.36` "
                "(it builds from source with cmake and g++ in about 5 minutes)."
            ) from exc
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                seed=seed,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"llama.cpp could not load {model_path}: {exc}. Is it a GGUF file? "
                "Delete it from the cache to have it rebuilt, or fix RAG_GENERATOR_PATH."
            ) from exc
        self._llama_cpp = llama_cpp
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.seed = seed
        #: Keep the KV cache of the shared prompt prefix between calls (much faster for prompts
        #: that share a system message or passages). llama.cpp's batched and one-token kernels
        #: round differently, so a reused prefix can move logits in the last digits (~1e-3 on a
        #: yes probability) and, on a near-tie, a greedy token. False = bit-identical replies
        #: for identical messages, at the cost of evaluating every prompt in full.
        self.reuse_cache = reuse_cache
        sha = stamped_sha256(model_path) or file_sha256(model_path)
        self.id = f"{model_path.name}@{sha[:12]}"
        self._lock = threading.Lock()
        #: Tokens in the last prompt and in the last reply (for tokens/s figures).
        self.last_prompt_tokens = 0
        self.last_completion_tokens = 0

        # The same formatter llama-cpp-python builds from the GGUF's own chat template; we
        # render prompts ourselves so that the prompt token count is exact and yes/no
        # scoring sees exactly the prompt a reply would.
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{model_path.name} has no chat template; use an instruct GGUF.")

        def token_text(token_id: int) -> str:
            return self._llm._model.token_get_text(token_id) if token_id != -1 else ""

        eos_id = self._llm.token_eos()
        self._formatter, self._prefix_formatter = (
            Jinja2ChatFormatter(
                template=template,
                eos_token=token_text(eos_id),
                bos_token=token_text(self._llm.token_bos()),
                stop_token_ids=[eos_id],
                add_generation_prompt=opened,
            )
            for opened in (True, False)
        )
        self._yes_ids, self._no_ids = yes_no_token_ids(self._encode)
        #: Prompt prefixes evaluated once and set aside: tokens -> KV cache bytes; see ``keep_prefix``.
        self._kept: dict[tuple[int, ...], bytes] = {}
        self.prefix_resumes = 0  # times a kept prefix or passage state was put back (for tests and tuning)
        #: Passage states (``keep_state``); None keeps none.
        self.states = states
        # The tokens that close every chat message: a prompt's prefix ending with them is a
        # prefix of every longer conversation (special tokens split text, so tokenizing the
        # whole prompt gives the same ids as tokenizing its messages apart).
        closed = self._render(self._prefix_formatter, [{"role": "user", "content": "x"}])
        opened = self._render(self._formatter, [{"role": "user", "content": "x"}])
        common = 0
        while common < min(len(closed), len(opened)) and closed[common] == opened[common]:
            common += 1
        self._message_end = tuple(closed[max(0, common - 2) : common]) if common == len(closed) else ()

    def close(self) -> None:
        """Nothing outside this process to release (``Generator.close``); ``free`` gives the model's memory back."""

    def free(self) -> None:
        """Free the model's memory now instead of at garbage collection; the generator is unusable afterwards."""
        self._llm.close()

    def _encode(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        """The chat template applied to ``messages`` with the assistant turn opened, as token ids."""
        return self._render(self._formatter, messages)

    def _render(self, formatter: Any, messages: Sequence[Message]) -> list[int]:
        result = formatter(messages=list(messages))
        return list(self._llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))

    def check_ready(self) -> None:
        """In process: once loaded, the model is always there."""

    def keep_prefix(self, messages: Sequence[Message]) -> int:
        """Evaluate ``messages`` (the fixed start of many prompts) now and keep its KV state aside.

        llama.cpp reuses only the prefix shared with the *previous* call, so one rewrite or
        judge prompt in between would make the next answer re-read the whole fixed prefix
        (system message and worked examples: several seconds for the 1.5B on 2 cores). With
        the prefix kept, a prompt that starts with it resumes from the copy instead. Kept
        prefixes are few and never dropped; the last one kept stays in the cache. Also warms
        the model up at start. Returns the prefix length in tokens.
        """
        with self._lock:
            tokens = self._render(self._prefix_formatter, messages)
            self._check_fits(tokens)
            self._load(tokens)
            self._kept[tuple(tokens)] = self._snapshot()
            return len(tokens)

    def keep_state(self, messages: Sequence[Message], *, pin: bool = False) -> bool:
        """Read ``messages`` (e.g. the fixed prefix and one passage) unless their state is kept; keep it.

        The state goes to the passage-state store (memory and disk, see ``rag.states``), so a
        later prompt that starts with exactly these tokens resumes from it. Returns True when
        nothing had to be read. A kept state is not loaded here: that costs a few milliseconds
        and happens when a prompt needs it, so checking many passages stays cheap.
        """
        if pin:
            with self._lock:
                if tuple(self._render(self._prefix_formatter, messages)) in self._kept:
                    return True
            self.keep_prefix(messages)
            return False
        with self._lock:
            tokens = self._render(self._prefix_formatter, messages)
            self._check_fits(tokens)
            if self.states is None:
                self._load(tokens)
                return False
            if self.states.contains(tokens):
                return True  # restored when a prompt that starts with it comes (``_resume_kept``)
            self._load(tokens)
            self.states.put(tokens, self._snapshot())
            return False

    def _shared(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the KV cache already holds."""
        llm = self._llm
        shared = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], tokens, strict=False):
            if a != b:
                break
            shared += 1
        return shared

    def _snapshot(self) -> bytes:
        """The KV state of sequence 0 (what the context has read) as bytes."""
        llama_cpp = self._llama_cpp
        size = llama_cpp.llama_state_seq_get_size(self._llm.ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._llm.ctx, buffer, size, 0)
        return bytes(buffer)[:written]

    def _restore(self, tokens: Sequence[int], data: bytes) -> bool:
        """Put a saved state for ``tokens`` back in the KV cache; False (cache emptied) if it would not load."""
        llm = self._llm
        t0 = time.perf_counter()
        llm.reset()
        llm._ctx.kv_cache_clear()
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self._llama_cpp.llama_state_seq_set_data(llm.ctx, buffer, len(data), 0) != len(data):
            llm.reset()  # could not restore: evaluate in full, as without a kept state
            llm._ctx.kv_cache_clear()
            return False
        llm.input_ids[: len(tokens)] = tokens
        llm.n_tokens = len(tokens)
        self.prefix_resumes += 1
        if self.states is not None:
            self.states.stats.restore_s += time.perf_counter() - t0
        return True

    def _boundaries(self, prompt: Sequence[int]) -> list[int]:
        """Lengths of the prompt's prefixes that end a chat message (where states can be kept), longest first."""
        marker = self._message_end
        n = len(marker)
        if not n:
            return []
        return [i for i in range(len(prompt) - 1, n - 1, -1) if tuple(prompt[i - n : i]) == marker]

    def _resume_kept(self, prompt: Sequence[int]) -> None:
        """Put back the longest kept state ``prompt`` starts with, if longer than what the cache holds."""
        if not self.reuse_cache:
            return
        have = self._shared(prompt)
        kept = [t for t in self._kept if have < len(t) < len(prompt) and tuple(prompt[: len(t)]) == t]
        best = max(kept, key=len, default=None)
        if self.states is not None:
            for end in self._boundaries(prompt):
                if end <= max(have, len(best) if best else 0):
                    break
                data = self.states.get(prompt[:end])
                if data is not None and self._restore(prompt[:end], data):
                    return
        if best is not None:
            self._restore(best, self._kept[best])

    def _load(self, tokens: Sequence[int], *, fresh_last: bool = False) -> None:
        """Make the KV cache hold exactly ``tokens``, reading as few of them as possible.

        ``fresh_last``: re-read at least the last token, so its logits are current.
        """
        llm = self._llm
        if not self.reuse_cache:
            llm.reset()
        self._resume_kept(tokens)
        shared = self._shared(tokens)
        if fresh_last:
            shared = min(shared, len(tokens) - 1)
        if shared < llm.n_tokens:
            if shared > 0 and llm._ctx.kv_cache_seq_rm(-1, shared, -1):
                llm.n_tokens = shared
            else:
                llm.reset()
                llm._ctx.kv_cache_clear()
                shared = 0
        if shared < len(tokens):
            llm.eval(list(tokens[shared:]))

    def _check_fits(self, prompt: list[int]) -> None:
        if len(prompt) >= self.n_ctx:
            raise InputError(
                f"The prompt is {len(prompt)} tokens but the model's context is {self.n_ctx}. "
                "Ask a shorter question, use fewer passages (RAG_TOP_K) or raise RAG_N_CTX."
            )

    def stream(self, messages: Sequence[Message], *, max_tokens: int, avoid: str = "") -> Iterator[str]:
        with self._lock:
            prompt = self.prompt_tokens(messages)
            self._check_fits(prompt)
            # A strongly negative bias bars the ruled-out reply's first token (greedy then takes the next best).
            bias = {t: -1e4 for t in start_token_ids(self._encode, avoid)} if avoid else None
            self.last_prompt_tokens = len(prompt)
            self.last_completion_tokens = 0
            if not self.reuse_cache:
                self._llm.reset()
            self._resume_kept(prompt)
            finish: str | None = None
            # The same call create_chat_completion makes after applying the GGUF's template;
            # temperature 0 + top_k 1 = greedy, so the seed only matters if that changes.
            chunks = cast(
                Iterator[Any],  # stream=True: an iterator of chunks
                self._llm.create_completion(
                    prompt,
                    max_tokens=max_tokens,
                    temperature=0.0,
                    top_k=1,
                    repeat_penalty=1.0,
                    seed=self.seed,
                    logit_bias=bias,
                    stop=[self._formatter.eos_token] if self._formatter.eos_token else [],
                    stream=True,
                ),
            )
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    finish = choice.get("finish_reason") or finish
                    if choice["text"]:
                        yield choice["text"]
            finally:
                # Every reply token but the last is fed back through the model, so the context
                # grew by prompt + reply - 1 tokens; a reply ended by the end-of-turn token also
                # had its last text token evaluated (the end token itself is not counted).
                evaluated = self._llm.n_tokens - len(prompt)
                self.last_completion_tokens = max(0, evaluated if finish == "stop" else evaluated + 1)

    def _next_logits(self, messages: Sequence[Message]) -> Any:
        """Evaluate the prompt for ``messages``; the logits row of the reply's first token (a numpy view).

        Call with the lock held. The evaluated prompt stays in the KV cache, so a ``stream``
        of the same messages right after re-evaluates one token, not the prompt.
        """
        import numpy as np

        tokens = self.prompt_tokens(messages)
        self._check_fits(tokens)
        self._load(tokens, fresh_last=True)
        llm = self._llm
        # With logits_all=False the wrapper keeps no logits; the context still holds the
        # last token's row, which is the only one we need.
        row = self._llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("Yes") against P("No") as the assistant's first token after ``messages``."""
        with self._lock:
            row = self._next_logits(messages)
            ids = (*self._yes_ids, *self._no_ids)
            logits = [float(row[t]) for t in ids]
            n_yes = len(self._yes_ids)
            return two_way_softmax(logits, range(n_yes), range(n_yes, len(ids)))

    def start_probability(self, messages: Sequence[Message], text: str) -> float:
        """P(the reply starts with ``text``'s first token), softmax over the whole vocabulary."""
        with self._lock:
            return start_mass(self._next_logits(messages), start_token_ids(self._encode, text))
