"""The answering pipeline end to end with deterministic fakes (real index, BM25, verification)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.generation import Message
from rag.ingest import ingest
from rag.pipeline import REFUSAL, Pipeline
from rag.settings import Settings
from rag.types import Answer, Turn
from tests.fakes import FakeEmbedder, FakeGenerator, ScoringFakeGenerator

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


def passages_of(messages: Sequence[Message]) -> str:
    return messages[-1]["content"]


def cite_passage_with(word: str, sentence: str) -> FakeGenerator:
    """A generator that cites whichever numbered passage contains ``word``."""

    def reply(messages: Sequence[Message]) -> str:
        content = passages_of(messages)
        if "Standalone question" in content:
            return "How far did the October 30, 2024 missile travel?"
        for n, passage in re.findall(r"^\[(\d+)\] (.*)$", content, flags=re.M):
            if word in passage:
                return f"{sentence} [{n}]."
        return "NOT FOUND"

    return FakeGenerator(reply)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("pipe")
    corpus = root / "corpus"
    shutil.copytree(SEEDS, corpus)
    s = Settings(corpus_dir=corpus, index_dir=root / "index", min_dense_score=0.0, min_keyword_score=0.0)
    ingest(corpus, s.index_dir, FakeEmbedder(), s, progress=False)
    return s


def test_answer_cites_the_passage_with_the_fact(settings: Settings) -> None:
    gen = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    pipeline = Pipeline(settings, FakeEmbedder(), gen)
    pieces = list(pipeline.ask_stream("Which port were the munitions shipped from?"))
    answer = pieces[-1]
    assert isinstance(answer, Answer)
    assert all(isinstance(p, str) for p in pieces[:-1]) and len(pieces) > 2
    assert not answer.abstained
    assert "Rason" in answer.text
    (citation,) = answer.citations
    source = (settings.corpus_dir / citation.doc_id).read_text(encoding="utf-8")
    assert source[citation.start : citation.end] == citation.text
    assert "Rason" in citation.text
    assert citation.span_start is not None and citation.span_end is not None
    assert "Rason" in source[citation.span_start : citation.span_end]
    assert answer.provenance["index_version"] and answer.provenance["prompt_sha256"]


def test_same_question_gives_the_same_answer(settings: Settings) -> None:
    gen = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    pipeline = Pipeline(settings, FakeEmbedder(), gen)
    a = pipeline.ask("Which port were the munitions shipped from?")
    b = pipeline.ask("Which port were the munitions shipped from?")
    assert (a.text, a.citations, a.provenance) == (b.text, b.citations, b.provenance)


def test_model_not_found_becomes_an_abstention_without_leaking_the_marker(settings: Settings) -> None:
    pipeline = Pipeline(settings, FakeEmbedder(), FakeGenerator(lambda m: "NOT FOUND"))
    pieces = list(pipeline.ask_stream("What is the official name of the missile?"))
    answer = pieces[-1]
    assert isinstance(answer, Answer) and answer.abstained and answer.text == REFUSAL
    assert answer.citations == ()
    assert "NOT FOUND" not in "".join(p for p in pieces if isinstance(p, str))


def test_invented_fact_is_refused(settings: Settings) -> None:
    gen = FakeGenerator(lambda m: "The missile was called the Hwasong-19 [1].")
    answer = Pipeline(settings, FakeEmbedder(), gen).ask("What was the missile called?")
    assert answer.abstained and answer.citations == ()
    assert any(not s.supported for s in answer.sentences)


def test_follow_up_is_rewritten_before_retrieval(settings: Settings) -> None:
    gen = cite_passage_with("7,000", "It traveled a distance of 7,000 kilometers")
    pipeline = Pipeline(settings, FakeEmbedder(), gen)
    history = [Turn("user", "What did North Korea test on October 30, 2024?"), Turn("assistant", "A missile [1].")]
    answer = pipeline.ask("And how far did it fly?", history)
    assert answer.standalone_question.startswith("How far did the October 30")
    assert not answer.abstained and "7,000" in answer.text
    assert "Standalone question" in gen.calls[0][-1]["content"]


def test_a_conversation_is_rewritten_once(settings: Settings) -> None:
    gen = cite_passage_with("7,000", "It traveled a distance of 7,000 kilometers")
    pipeline = Pipeline(settings, FakeEmbedder(), gen)
    history = [Turn("user", "What did North Korea test on October 30, 2024?"), Turn("assistant", "A missile [1].")]
    pipeline.retrieve("And how far did it fly?", history)
    pipeline.ask("And how far did it fly?", history)
    rewrites = [c for c in gen.calls if "Standalone question" in c[-1]["content"]]
    assert len(rewrites) == 1
    other = [Turn("user", "What did Russia send?"), Turn("assistant", "Oil [1].")]
    pipeline.retrieve("And how far did it fly?", other)  # another conversation: rewritten anew
    assert len([c for c in gen.calls if "Standalone question" in c[-1]["content"]]) == 2


def test_gate_refuses_without_calling_the_model(settings: Settings) -> None:
    strict = settings.model_copy(update={"min_dense_score": 1.01, "min_keyword_score": 1e9})
    gen = FakeGenerator(lambda m: "anything [1].")
    answer = Pipeline(strict, FakeEmbedder(), gen).ask("How do I bake sourdough bread?")
    assert answer.abstained and gen.calls == []


def test_blank_question_is_an_input_error(settings: Settings) -> None:
    pipeline = Pipeline(settings, FakeEmbedder(), FakeGenerator(lambda m: ""))
    with pytest.raises(InputError):
        pipeline.ask("   ")


def test_upload_is_searchable_and_delete_removes_it(tmp_path: Path, settings: Settings) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(settings.corpus_dir, corpus)
    s = settings.model_copy(update={"corpus_dir": corpus, "index_dir": tmp_path / "index"})
    ingest(corpus, s.index_dir, FakeEmbedder(), s, progress=False)
    pipeline = Pipeline(s, FakeEmbedder(), None)
    info = pipeline.add_document("notes.md", b"# Notes\n\nThe zebra crossing festival is held in Quito.\n")
    assert info.doc_id == "notes.md" and (corpus / "notes.md").exists()
    assert pipeline.search("zebra festival Quito", k=1)[0].chunk.doc_id == "notes.md"
    pipeline.delete_document("notes.md")
    assert not (corpus / "notes.md").exists()
    assert all(h.chunk.doc_id != "notes.md" for h in pipeline.search("zebra festival Quito", k=5))
    with pytest.raises(InputError):
        pipeline.delete_document("notes.md")
    with pytest.raises(InputError):
        pipeline.add_document("../escape.txt", b"hello there")


class JudgingGenerator(FakeGenerator):
    """A fake that also answers the yes/no self-check with a fixed probability."""

    def __init__(self, reply: object, p_yes: float) -> None:
        super().__init__(reply)  # type: ignore[arg-type]
        self.p_yes = p_yes
        self.judged: list[list[Message]] = []

    def yes_probability(self, messages: Sequence[Message]) -> float:
        self.judged.append(list(messages))
        return self.p_yes


@pytest.mark.parametrize(("p_yes", "abstained"), [(0.95, False), (0.2, True)])
def test_self_check_below_threshold_abstains(settings: Settings, p_yes: float, abstained: bool) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = JudgingGenerator(base.reply, p_yes)
    answer = Pipeline(settings.model_copy(update={"min_judge": 0.5}), FakeEmbedder(), gen).ask(
        "Which port were the munitions shipped from?"
    )
    assert answer.abstained is abstained
    assert answer.confidence == p_yes
    # The check continues the answering conversation, so the model's cache of the passages is reused.
    (judged,) = gen.judged
    assert judged[:-2] == gen.calls[-1] and judged[-2]["role"] == "assistant"


@pytest.mark.parametrize(("p_missing", "abstained"), [(0.9, True), (0.5, True), (0.2, False)])
def test_the_models_own_not_found_probability_decides_refusals(
    settings: Settings, p_missing: float, abstained: bool
) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, p_missing)
    pipeline = Pipeline(settings.model_copy(update={"refuse_at": 0.5}), FakeEmbedder(), gen)
    answer = pipeline.ask("Which port were the munitions shipped from?")
    assert answer.abstained is abstained
    assert answer.confidence == round(1 - p_missing, 4)
    if abstained:
        assert answer.text == REFUSAL and answer.citations == () and gen.avoided == []
        assert "finds no answer" in answer.notes[0]
    else:
        # Below the bar NOT FOUND is barred, so the model gives its best answer instead.
        assert gen.avoided == ["NOT FOUND"] and "Rason" in answer.text


def passage_count(messages: Sequence[Message]) -> int:
    return len(re.findall(r"^\[\d+\] ", passages_of(messages), flags=re.M))


@pytest.mark.parametrize(("p_first", "read_all"), [(0.05, False), (0.29, False), (0.3, True), (0.6, True)])
def test_the_best_passage_is_read_first(settings: Settings, p_first: float, read_all: bool) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, lambda m: p_first if passage_count(m) == 1 else 0.1)
    # Whole passages (context_tokens 0), so that focusing keeps all top_k of them.
    early = settings.model_copy(update={"best_passage_first": True, "refuse_at": 0.3, "context_tokens": 0})
    pipeline = Pipeline(early, FakeEmbedder(), gen)
    answer = pipeline.ask("Which port were the munitions shipped from?")
    counts = [passage_count(m) for m in gen.scored]
    assert counts == ([1, settings.top_k] if read_all else [1])
    # The reply is generated from exactly the prompt whose P(NOT FOUND) decided, so its KV cache is reused.
    assert gen.calls[-1] == gen.scored[-1]
    assert not answer.abstained and "Rason" in answer.text
    assert answer.confidence == round(1 - (0.1 if read_all else p_first), 4)
    assert answer.provenance["passages_read"] == str(settings.top_k if read_all else 1)
    if not read_all:
        (citation,) = answer.citations
        assert " ".join(citation.text.split()) in passages_of(gen.scored[0])  # the prompt squashes whitespace


def test_best_passage_first_off_reads_all_passages_once(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, 0.05)
    off = settings.model_copy(update={"best_passage_first": False, "context_tokens": 0})
    Pipeline(off, FakeEmbedder(), gen).ask("Which port were the munitions shipped from?")
    assert [passage_count(m) for m in gen.scored] == [settings.top_k]


def test_refuse_at_one_turns_the_check_off(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, 0.99)
    answer = Pipeline(settings.model_copy(update={"refuse_at": 1.0}), FakeEmbedder(), gen).ask(
        "Which port were the munitions shipped from?"
    )
    assert not answer.abstained and gen.avoided == [""]
