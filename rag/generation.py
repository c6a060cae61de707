"""Generation stage: chat messages -> streamed text from a model.

``Generator`` is the seam; backends: llama.cpp (default, the shipped GGUF),
transformers, and any OpenAI-compatible server over HTTP. Deterministic by
default: greedy decoding with a fixed seed.

Every backend also scores "is the answer Yes?" from the model's next-token logits
(``yes_probability``; on a server, from its top logprobs), which the reranker uses
as a judge. Heavy libraries are imported inside the constructors, so importing this
module stays cheap and tests with fakes never load them.

This module holds what every backend shares: the protocols, the small pure helpers
(first-token ids, the yes/no softmax, a reply's start mass, the plain chat prompt) and
``load_generator``. The backends live apart, in ``rag.generation_llama``,
``rag.generation_hf`` and ``rag.generation_openai``, because together they were most
of the code and share nothing but these helpers; ``load_generator`` imports the one
it builds, inside the function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rag.errors import InputError, ModelError
from rag.models import QWEN_CODER_0_5B, QWEN_CODER_1_5B, ensure_gguf
from rag.states import StateStore

if TYPE_CHECKING:
    from rag.settings import Settings

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


class Generator(Protocol):
    """What the pipeline needs of a backend; every backend implements all of it.

    A backend that cannot do something says so in its answer (``None`` from
    ``start_probability``, ``False`` from ``keep_state``) instead of lacking the
    method, so the pipeline never probes for abilities.
    """

    #: Model id recorded in each answer's provenance (name + short hash).
    id: str
    #: Whether ``keep_state`` keeps anything (llama.cpp's passage states). Without it, reading passages
    #: ahead of questions (``rag ingest --warm``, ``RAG_WARM_WHEN_IDLE``) would only spend time.
    keeps_states: bool

    def stream(self, messages: Sequence[Message], *, max_tokens: int, avoid: str = "") -> Iterator[str]:
        """Yield the reply to ``messages`` piece by piece (greedy, deterministic).

        ``avoid``: a reply the caller has ruled out (e.g. "NOT FOUND"); backends that can
        bar its first token do, so the model gives its best other reply instead.
        """
        ...

    def count_tokens(self, text: str) -> int: ...

    def start_probability(self, messages: Sequence[Message], text: str) -> float | None:
        """P(the assistant's first reply token is the first token of ``text``), over the whole
        vocabulary; None when the backend cannot tell."""
        ...

    def check_ready(self) -> None:
        """Raise a ``RagError`` when the model cannot answer now (its server is down); in process it always can."""
        ...

    def close(self) -> None:
        """Release what the backend holds outside this process (a model server's connections); the service's
        shutdown calls it. In process there is nothing of the kind: it does nothing (the model's memory goes with
        the process, and a thread may still be reading a passage with it)."""
        ...

    def keep_state(self, messages: Sequence[Message], *, pin: bool = False) -> bool:
        """Have the model read ``messages`` (the start of later prompts) and keep its state for them.

        ``pin``: a fixed prefix that many prompts share, kept for the model's lifetime rather
        than among the passage states. Returns True when the state was already kept (nothing
        had to be read); False when it was read now, or when the backend keeps no states
        (``keeps_states`` False).
        """
        ...


class YesNoJudge(Protocol):
    """A model that can answer a yes/no question with a probability instead of text."""

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("Yes") / (P("Yes") + P("No")) for the assistant's first reply token."""
        ...


# Spellings whose first token counts as a yes / a no. Chat models usually start a reply
# without a space, but some tokenizers prefer the space-prefixed piece.
YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO")


def yes_no_token_ids(encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
    """First token ids of the yes and no spellings, without ids claimed by both sides.

    >>> vocab = {"Yes": 1, " Yes": 2, "yes": 1, "No": 3}
    >>> yes_no_token_ids(lambda s: [vocab[s]] if s in vocab else [])
    ([1, 2], [3])
    """
    yes = {ids[0] for v in YES_VARIANTS if (ids := encode(v))}
    no = {ids[0] for v in NO_VARIANTS if (ids := encode(v))}
    both = yes & no
    return sorted(yes - both), sorted(no - both)


def start_token_ids(encode: Callable[[str], list[int]], text: str) -> list[int]:
    """First token ids of ``text`` as a reply would begin it: bare, or after a space.

    >>> start_token_ids(lambda s: [len(s)], "NOT FOUND")
    [9, 10]
    """
    return sorted({ids[0] for v in (text, " " + text) if (ids := encode(v))})


def two_way_softmax(logits: Sequence[float], yes_ids: Sequence[int], no_ids: Sequence[int]) -> float:
    """Probability of "yes" when the model must pick between the yes ids and the no ids.

    Each side's mass is the log-sum-exp of its logits, so several spellings add up.

    >>> round(two_way_softmax([0.0, 2.0, 0.0], [1], [0, 2]), 4)  # e^2 / (e^2 + 1 + 1)
    0.787
    >>> two_way_softmax([5.0, 5.0], [0], [1])
    0.5
    """
    if not yes_ids or not no_ids:
        raise ModelError("The model's vocabulary has no 'Yes'/'No' token; it cannot be used as a judge.")

    def lse(ids: Sequence[int]) -> float:
        top = max(float(logits[i]) for i in ids)
        return top + math.log(sum(math.exp(float(logits[i]) - top) for i in ids))

    # sigmoid(lse_yes - lse_no) == e^lse_yes / (e^lse_yes + e^lse_no), written to avoid overflow
    diff = lse(no_ids) - lse(yes_ids)
    if diff > 0:
        e = math.exp(-diff)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(diff))


def start_mass(logits: Any, ids: Sequence[int]) -> float:
    """Softmax probability mass of ``ids`` in one row of logits (stable for large logits).

    >>> round(start_mass([0.0, 0.0, 1000.0, 1000.0], [2]), 4)
    0.5
    >>> start_mass([1.0, 2.0], [])
    0.0
    """
    import numpy as np

    row = np.asarray(logits, dtype=np.float64)
    weights = np.exp(row - row.max())
    return float(weights[list(ids)].sum() / weights.sum()) if len(ids) else 0.0


def plain_chat_prompt(messages: Sequence[Message]) -> str:
    """Fallback prompt for models without a chat template: one "role: content" line each.

    >>> plain_chat_prompt([{"role": "user", "content": "Hi"}])
    'user: Hi\\nassistant:'
    """
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def load_generator(settings: Settings) -> Generator:
    """Build the generator the settings ask for (loads the model: call once, then inject it)."""
    if settings.generator == "openai":
        from rag.generation_openai import OpenAIGenerator

        if not settings.generator_url:
            raise InputError(
                "RAG_GENERATOR=openai needs RAG_GENERATOR_URL: the model server's base URL, ending in /v1 "
                "(e.g. http://127.0.0.1:8080/v1)."
            )
        key = settings.generator_api_key
        return OpenAIGenerator(
            settings.generator_url,
            api_key=key.get_secret_value() if key is not None else None,
            model=settings.generator_server_model,
            timeout_s=settings.generator_timeout_s,
            retries=settings.generator_retries,
            seed=settings.seed,
        )
    path = settings.generator_path
    if settings.generator == "transformers":
        from rag.generation_hf import TransformersGenerator

        if path is None:
            raise InputError(
                "The transformers backend needs RAG_GENERATOR_PATH: a local Hugging Face model folder "
                "or a .gguf file inside one."
            )
        if not path.exists():
            raise InputError(f"RAG_GENERATOR_PATH={path} does not exist.")
        if path.is_file() and path.suffix == ".gguf":
            return TransformersGenerator(
                path.parent, gguf_file=path.name, seed=settings.seed, n_threads=settings.n_threads
            )
        return TransformersGenerator(path, seed=settings.seed, n_threads=settings.n_threads)
    if path is not None and not path.is_file():
        raise InputError(f"RAG_GENERATOR_PATH={path} is not a GGUF file.")
    spec = QWEN_CODER_0_5B if settings.generator_model == "qwen2.5-coder-0.5b" else QWEN_CODER_1_5B
    model_path = path if path is not None else ensure_gguf(spec, settings.cache_dir)
    from rag.generation_llama import LlamaCppGenerator

    generator = LlamaCppGenerator(model_path, n_ctx=settings.n_ctx, n_threads=settings.n_threads, seed=settings.seed)
    if settings.state_cache_mb > 0 or settings.state_memory_mb > 0:
        sha = generator.id.rsplit("@", 1)[-1]
        generator.states = StateStore(
            generator.id,
            settings.cache_dir / "states" / sha if settings.state_cache_mb > 0 else None,
            disk_bytes=settings.state_cache_mb * 1024 * 1024,
            memory_bytes=settings.state_memory_mb * 1024 * 1024,
        )
    return generator
