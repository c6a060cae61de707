"""The transformers backend: a Hugging Face model folder (or a GGUF inside one), greedy and streamed.

Apart from ``rag.generation`` (the ``Generator`` protocol and the helpers every backend
shares) and from the llama.cpp backend because it shares nothing with the latter but those
helpers. torch and transformers are imported in the constructor, and ``load_generator``
imports this module only when RAG_GENERATOR=transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import ModelError
from rag.generation import Message, plain_chat_prompt, start_mass, start_token_ids, two_way_softmax, yes_no_token_ids


class TransformersGenerator:
    """A Hugging Face model folder (or a GGUF inside it) through transformers, greedy and streamed.

    Much slower than llama.cpp for the shipped GGUF (see /work/shared/MODELS.md); it exists
    for models that only come as transformers checkpoints and to test the seam.
    """

    keeps_states = False

    def __init__(self, model_dir: Path, *, gguf_file: str | None = None, seed: int = 0, n_threads: int = 2) -> None:
        if not model_dir.is_dir():
            raise ModelError(f"The model folder {model_dir} does not exist. Check RAG_GENERATOR_PATH.")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelError("transformers and torch are needed for the transformers backend.") from exc
        torch.set_num_threads(n_threads)  # process-wide: the same cap the other models use
        extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, **extra)
            self._model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), local_files_only=True, dtype=torch.float32, **extra
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"transformers could not load {model_dir}: {exc}") from exc
        self._model.eval()
        self._torch = torch
        self.seed = seed
        self.id = model_dir.name + (f"/{gguf_file}" if gguf_file else "")
        self._lock = threading.Lock()
        self.last_prompt_tokens = 0
        self.last_completion_tokens = 0
        self._yes_ids, self._no_ids = yes_no_token_ids(self._encode)

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def format_prompt(self, messages: Sequence[Message]) -> str:
        """The tokenizer's chat template with the assistant turn opened, or ``plain_chat_prompt``."""
        if getattr(self._tokenizer, "chat_template", None):
            text = self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            return str(text)
        return plain_chat_prompt(messages)

    def _inputs(self, messages: Sequence[Message]) -> Any:
        # The template already holds any special tokens the model expects.
        return self._tokenizer(self.format_prompt(messages), return_tensors="pt", add_special_tokens=False)

    def stream(self, messages: Sequence[Message], *, max_tokens: int, avoid: str = "") -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        with self._lock:
            inputs = self._inputs(messages)
            prompt_len = int(inputs["input_ids"].shape[1])
            self.last_prompt_tokens = prompt_len
            streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
            abandoned = threading.Event()
            failure: list[BaseException] = []

            class _StopWhenAbandoned(StoppingCriteria):
                # Lets generate() end early when the consumer stops reading (e.g. a client left).
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                    return abandoned.is_set()

            # Bar only the first reply token (begin_suppress_tokens), as the llama backend does.
            barred = {"begin_suppress_tokens": start_token_ids(self._encode, avoid)} if avoid else {}
            pad_id = self._tokenizer.pad_token_id
            if pad_id is None:
                pad_id = self._tokenizer.eos_token_id

            def run() -> None:
                try:
                    torch.manual_seed(self.seed)
                    with torch.inference_mode():
                        out = self._model.generate(
                            **inputs,
                            max_new_tokens=max_tokens,
                            do_sample=False,
                            streamer=streamer,
                            pad_token_id=pad_id,
                            stopping_criteria=StoppingCriteriaList([_StopWhenAbandoned()]),
                            **barred,
                        )
                    self.last_completion_tokens = int(out.shape[1]) - prompt_len
                except BaseException as exc:
                    failure.append(exc)
                    streamer.end()  # otherwise the consumer would wait forever

            worker = threading.Thread(target=run, name="transformers-generate", daemon=True)
            worker.start()
            try:
                for text in streamer:
                    if text:
                        yield text
            finally:
                abandoned.set()
                worker.join()
            if failure:
                raise ModelError(f"Generation failed: {failure[0]}") from failure[0]

    def _next_logits(self, messages: Sequence[Message]) -> list[float]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            return list(self._model(**self._inputs(messages)).logits[0, -1].tolist())

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("Yes") against P("No") as the assistant's first token after ``messages``."""
        return two_way_softmax(self._next_logits(messages), self._yes_ids, self._no_ids)

    def start_probability(self, messages: Sequence[Message], text: str) -> float:
        """P(the reply starts with ``text``'s first token), softmax over the whole vocabulary."""
        return start_mass(self._next_logits(messages), start_token_ids(self._encode, text))

    def check_ready(self) -> None:
        """In process: once loaded, the model is always there."""

    def close(self) -> None:
        """In process: no connection to release."""

    def keep_state(self, messages: Sequence[Message], *, pin: bool = False) -> bool:
        """No KV reuse here: transformers re-reads every prompt in full."""
        return False
