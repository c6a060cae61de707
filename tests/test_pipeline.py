"""The answering pipeline end to end with deterministic fakes (real index, BM25, verification)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from rag.decision import calibrated
from rag.errors import InputError
from rag.generation import Message
from rag.ingest import ingest
from rag.pipeline import REFUSAL, Pipeline
from rag.settings import Settings
from rag.types import Answer, Turn
from tests.fakes import FakeEmbedder, FakeGenerator, ScoringFakeGenerator

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


def passages_of(messages: Sequence[Message]) -> str:
    """The passages and the question of a prompt (its last two messages)."""
    return "\n".join(m["content"] for m in messages[-2:])


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
    # Only verified text streams: here the one sentence, once it passed.
    assert all(isinstance(p, str) for p in pieces[:-1]) and "".join(pieces[:-1]) == answer.text  # type: ignore[arg-type]
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


@pytest.mark.parametrize(("p_missing", "abstained"), [(0.9, True), (0.5, True), (0.2, False)])
def test_the_models_own_not_found_probability_decides_refusals(
    settings: Settings, p_missing: float, abstained: bool
) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, p_missing)
    s = settings.model_copy(update={"refuse_at": 0.5, "refuse_together_at": 0.5, "stop_reading_at": 0.1})
    pipeline = Pipeline(s, FakeEmbedder(), gen)
    answer = pipeline.ask("Which port were the munitions shipped from?")
    assert answer.abstained is abstained
    # An answer carries the calibrated value; a refusal the model's own, uncalibrated.
    raw = round(1 - p_missing, 4)
    assert answer.confidence == (raw if abstained else calibrated(raw))
    # No passage scored under the early-stop bar, so every passage was read alone.
    assert [passage_count(m) for m in gen.scored][: settings.top_k] == [1] * settings.top_k
    if abstained:
        assert answer.text == REFUSAL and answer.citations == () and gen.avoided == []
        # ...and, none alone holding the answer, their best sentences once more together.
        assert len(gen.scored) == settings.top_k + 1 and answer.provenance["p_together"] == f"{p_missing:.4f}"
        assert "finds no answer" in answer.notes[0] and "read together" in answer.notes[0]
    else:
        # Below the bar NOT FOUND is barred, so the model gives its best answer instead.
        assert gen.avoided == ["NOT FOUND"] and "Rason" in answer.text
        assert len(gen.scored) == settings.top_k  # one passage sufficed: no read together


def test_an_answer_no_passage_holds_alone_is_looked_for_in_all_of_them_together(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    scored = 0

    def p_not_found(messages: Sequence[Message]) -> float:
        nonlocal scored
        scored += 1
        return 0.9 if scored <= settings.top_k else 0.1  # sure of nothing alone, sure together

    gen = ScoringFakeGenerator(base.reply, p_not_found)
    answer = Pipeline(settings, FakeEmbedder(), gen).ask("Which port were the munitions shipped from?")
    assert not answer.abstained and "Rason" in answer.text and answer.confidence == calibrated(0.9)
    assert answer.provenance["p_together"] == "0.1000"
    together = gen.scored[-1]
    assert passages_of(gen.calls[-1]) == passages_of(together)  # drafted from what was read together
    assert " ".join(answer.citations[0].text.split()) in " ".join(passages_of(together).split())
    scored = 0
    off = Pipeline(settings.model_copy(update={"together_tokens": 0}), FakeEmbedder(), gen)
    assert off.ask("Which port were the munitions shipped from?").abstained  # without the second look: refused


def passage_count(messages: Sequence[Message]) -> int:
    return len(re.findall(r"^\[\d+\] ", passages_of(messages), flags=re.M))


def p_where(word: str, p_there: float, p_elsewhere: float) -> object:
    return lambda m: p_there if word in passages_of(m) else p_elsewhere


def test_passages_are_read_one_at_a_time_until_one_is_confident(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, p_where("Rason", 0.05, 0.8))
    pipeline = Pipeline(settings.model_copy(update={"refuse_at": 0.3, "stop_reading_at": 0.1}), FakeEmbedder(), gen)
    answer = pipeline.ask("Which port were the munitions shipped from?")
    # Each read holds one passage; reading stopped at the passage with the answer.
    assert all(passage_count(m) == 1 for m in gen.scored)
    assert "Rason" in passages_of(gen.scored[-1]) and not any("Rason" in passages_of(m) for m in gen.scored[:-1])
    assert answer.provenance["passages_read"] == str(len(gen.scored))
    # The reply is generated from exactly the prompt whose P(NOT FOUND) decided.
    assert gen.calls[-1] == gen.scored[-1]
    assert not answer.abstained and "Rason" in answer.text and answer.confidence == calibrated(0.95)
    (citation,) = answer.citations
    assert citation.marker == 1 and "Rason" in citation.text


def test_without_a_confident_passage_the_best_one_answers(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, p_where("Rason", 0.2, 0.7))
    s = settings.model_copy(update={"refuse_at": 0.3, "stop_reading_at": 0.1})
    answer = Pipeline(s, FakeEmbedder(), gen).ask("Which port were the munitions shipped from?")
    assert len(gen.scored) == settings.top_k  # nothing under 0.1: all were read
    assert not answer.abstained and "Rason" in answer.text and answer.confidence == calibrated(0.8)


def test_a_passage_state_is_read_once_and_reused(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, p_where("Rason", 0.05, 0.8))
    pipeline = Pipeline(settings, FakeEmbedder(), gen)
    pipeline.ask("Which port were the munitions shipped from?")
    read_first = len(gen.read)
    answer = pipeline.ask("Which port were the munitions shipped from?")
    # The passages were kept by the first ask: the second read no passage anew.
    assert len(gen.read) == read_first and answer.timings["passages_warm"] == len(gen.scored) // 2 >= 1
    assert all(m[-1]["role"] == "user" and m[-1]["content"].startswith("Passage") for m in gen.read[2:])


def test_a_backend_that_cannot_score_reads_all_passages_at_once(settings: Settings) -> None:
    gen = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    answer = Pipeline(settings, FakeEmbedder(), gen).ask("Which port were the munitions shipped from?")
    assert [passage_count(m) for m in gen.calls] == [settings.top_k]
    assert not answer.abstained and answer.confidence is None and gen.avoided == [""]


def test_only_verified_sentences_stream(settings: Settings) -> None:
    reply = "The munitions were shipped from the port of Rason [1]. They were paid for in gold bars [1]."
    gen = ScoringFakeGenerator(lambda m: reply, p_where("Rason", 0.05, 0.8))
    pieces = list(Pipeline(settings, FakeEmbedder(), gen).ask_stream("Which port were the munitions shipped from?"))
    answer = pieces[-1]
    assert isinstance(answer, Answer)
    streamed = "".join(p for p in pieces[:-1] if isinstance(p, str))
    # The invented second sentence never went out, and what went out is the final answer.
    assert streamed == answer.text and "Rason" in streamed and "gold" not in streamed
    assert "gold" in answer.draft


def test_refuse_at_one_never_refuses_on_the_score(settings: Settings) -> None:
    base = cite_passage_with("Rason", "The munitions were shipped from the port of Rason")
    gen = ScoringFakeGenerator(base.reply, 0.99)
    answer = Pipeline(settings.model_copy(update={"refuse_at": 1.0}), FakeEmbedder(), gen).ask(
        "Which port were the munitions shipped from?"
    )
    assert not answer.abstained and gen.avoided == ["NOT FOUND"]


def test_warming_reads_each_passage_once_then_stops(settings: Settings) -> None:
    gen = ScoringFakeGenerator(lambda m: "NOT FOUND", 0.9)
    pipeline = Pipeline(settings, FakeEmbedder(), gen)
    pinned = len(gen.read)  # the fixed prefixes
    steps = 0
    while pipeline.warm_next():
        steps += 1
        assert len(gen.read) == pinned + steps  # one passage per call
    assert steps == len(pipeline._retriever.index.chunks)
    assert not pipeline.warm_next()
    # Questions now find every whole-chunk passage kept; only a passage merged from two
    # overlapping chunks (rag.retrieval.merge_overlapping) is new text to read.
    question = "Which port were the munitions shipped from?"
    chunk_texts = {c.text for c in pipeline._retriever.index.chunks}
    merged = [h for h in pipeline.search(question) if h.chunk.text not in chunk_texts]
    answer = pipeline.ask(question)
    assert len(gen.read) == pinned + steps + len(merged)
    assert answer.timings["passages_warm"] == settings.top_k - len(merged)


def test_warming_stops_at_its_budget_and_starts_over_after_an_upload(settings: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(settings.corpus_dir, corpus)
    s = settings.model_copy(update={"corpus_dir": corpus, "index_dir": tmp_path / "index", "warm_passages": 3})
    ingest(corpus, s.index_dir, FakeEmbedder(), s, progress=False)
    gen = ScoringFakeGenerator(lambda m: "NOT FOUND", 0.9)
    pipeline = Pipeline(s, FakeEmbedder(), gen)
    assert len(pipeline._retriever.index.chunks) > 3
    assert [pipeline.warm_next() for _ in range(5)] == [True, True, True, False, False]
    pipeline.add_document("notes.md", b"# Notes\n\nThe zebra crossing festival is held in Quito.\n")
    assert pipeline.warm_next()  # a new index: new passages may need reading, within a fresh budget


def test_warming_reads_nothing_with_a_generator_that_keeps_no_states(settings: Settings) -> None:
    # An OpenAI-compatible server (or transformers) keeps nothing here: reading ahead would only spend time.
    gen = FakeGenerator(lambda m: "NOT FOUND")
    assert not Pipeline(settings, FakeEmbedder(), gen).warm_next()
    assert gen.calls == []
