"""The baseline ``rag eval --baseline`` measures the pipeline against: a plain RAG prompt.

Same retrieval (rewrite included) and the same model, but none of the pipeline's own
steps: the top-k passages go in whole, in one prompt, with the same instructions
("answer with a [n] marker, or NOT FOUND"); no reading alone, no refusal bar, no
focus, no NOT FOUND barring, no verification. Its answer is the model's raw reply
(markers kept); a reply starting NOT FOUND is its refusal. Citations are the markers
the reply carries, located by the verifier with no overlap bar, so citation figures
mean the same thing on both sides.

This is what the well-known stacks do by default, so the report can say what each
of the pipeline's steps buys on the same questions, measured in one run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from rag.citations import verify
from rag.errors import RagError
from rag.pipeline import Pipeline
from rag.prompting import NOT_FOUND, answer_messages
from rag.types import Answer, DocInfo, Hit, Turn


class PlainRag:
    """Answers through ``pipeline``'s retrieval and model with one plain prompt (see the module)."""

    def __init__(self, pipeline: Pipeline) -> None:
        if pipeline.generator is None:
            raise RagError("the baseline needs the pipeline's generator")
        self.pipeline = pipeline
        self.generator = pipeline.generator
        self.top_k = pipeline.settings.top_k
        self.max_new_tokens = pipeline.settings.max_new_tokens

    def retrieve(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> list[Hit]:
        return self.pipeline.retrieve(question, history, k)

    def ask(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer:
        t0 = time.perf_counter()
        hits = self.pipeline.retrieve(question, history, k or self.top_k)
        # The pipeline remembers its rewrites, so this is the standalone question retrieval used.
        standalone = self.pipeline.standalone_question(question, history)
        raw = "".join(self.generator.stream(answer_messages(standalone, hits), max_tokens=self.max_new_tokens))
        reply = raw.strip()
        refused = not reply or reply.upper().startswith(NOT_FOUND)
        cited = () if refused else verify(reply, standalone, hits, min_overlap=0.0).citations
        return Answer(
            question=question,
            text=reply if not refused else "The documents do not say.",
            abstained=refused,
            citations=cited,
            sentences=(),
            standalone_question=standalone,
            timings={"total_s": round(time.perf_counter() - t0, 4)},
            provenance={"baseline": "plain RAG prompt", "generator": self.generator.id, "k": str(k or self.top_k)},
            draft=raw,
        )

    # What the eval runner never calls on a baseline; present so it is a QAPipeline.
    def search(self, query: str, k: int | None = None) -> list[Hit]:
        return self.pipeline.search(query, k)

    def ask_stream(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Iterator[str | Answer]:
        answer = self.ask(question, history, k)
        yield answer.text
        yield answer

    def documents(self) -> list[DocInfo]:
        return self.pipeline.documents()

    def add_document(self, filename: str, data: bytes) -> DocInfo:
        raise NotImplementedError("the baseline only answers")

    def delete_document(self, doc_id: str) -> None:
        raise NotImplementedError("the baseline only answers")

    def info(self) -> dict[str, object]:
        return {**self.pipeline.info(), "baseline": "plain RAG prompt"}

    def warm_next(self) -> bool:
        return False

    def check_ready(self) -> None:
        self.pipeline.check_ready()

    def close(self) -> None:
        pass  # the pipeline it answers through is its caller's, to close with it
