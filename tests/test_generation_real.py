"""The shipped 1.5B GGUF through llama.cpp (slow: assembles ~1 GB once, loads the model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rag.generation_llama import LlamaCppGenerator
from rag.models import QWEN_CODER_1_5B, ensure_generator_gguf, stamped_sha256
from rag.settings import Settings

pytestmark = pytest.mark.slow

SYSTEM = "Answer the question using only the context. Be brief."
FACT_QUESTION = [
    {"role": "system", "content": SYSTEM},
    {
        "role": "user",
        "content": "Context: The Blue Harbor library opens at 7:15 and its door code is 4417.\n\n"
        "Question: What is the door code of the Blue Harbor library?",
    },
]


def _judge(question: str, passage: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You judge whether a passage answers a question. Reply Yes or No."},
        {"role": "user", "content": f"Question: {question}\nPassage: {passage}\nDoes the passage answer the question?"},
    ]


@pytest.fixture(scope="module")
def generator() -> Iterator[LlamaCppGenerator]:
    # The real cache folder, so CI assembles the 1 GB file only once across runs.
    path = ensure_generator_gguf(Settings().cache_dir)
    gen = LlamaCppGenerator(path, n_ctx=2048, n_threads=2, seed=0)
    yield gen
    gen.free()


def test_assembled_model_is_verified_and_named_by_hash(generator: LlamaCppGenerator) -> None:
    assert stamped_sha256(generator.model_path) == QWEN_CODER_1_5B.sha256
    assert generator.model_path.stat().st_size == QWEN_CODER_1_5B.size
    assert generator.id == f"{QWEN_CODER_1_5B.file_name}@{QWEN_CODER_1_5B.sha256[:12]}"


def test_answers_from_the_prompt_deterministically(generator: LlamaCppGenerator) -> None:
    first = "".join(generator.stream(FACT_QUESTION, max_tokens=40))
    assert "4417" in first
    assert 0 < generator.last_completion_tokens <= 40
    assert generator.last_prompt_tokens == len(generator.prompt_tokens(FACT_QUESTION))
    # Other work in between changes the KV cache; the reply must not depend on it.
    generator.yes_probability(_judge("Who wrote Hamlet?", "Shakespeare wrote Hamlet."))
    assert "".join(generator.stream(FACT_QUESTION, max_tokens=40)) == first


def test_max_tokens_cuts_the_same_reply(generator: LlamaCppGenerator) -> None:
    full = "".join(generator.stream(FACT_QUESTION, max_tokens=40))
    short = "".join(generator.stream(FACT_QUESTION, max_tokens=3))
    assert generator.last_completion_tokens == 3
    assert short and full.startswith(short) and len(short) < len(full)


def test_yes_probability_prefers_the_relevant_passage(generator: LlamaCppGenerator) -> None:
    question = "What is the boiling point of water at sea level?"
    relevant = generator.yes_probability(
        _judge(question, "At sea level, pure water boils at 100 degrees Celsius (212 degrees Fahrenheit).")
    )
    irrelevant = generator.yes_probability(
        _judge(question, "The Eiffel Tower was completed in 1889 and is 330 metres tall.")
    )
    assert relevant > 0.5 > irrelevant
    # Same messages, nearly the same score whatever was evaluated in between: a reused KV
    # prefix only moves the last digits.
    again = generator.yes_probability(
        _judge(question, "At sea level, pure water boils at 100 degrees Celsius (212 degrees Fahrenheit).")
    )
    assert again == pytest.approx(relevant, abs=0.02)


def test_not_found_probability_tells_missing_answers_apart(generator: LlamaCppGenerator) -> None:
    from rag.prompting import NOT_FOUND, answer_messages
    from rag.types import Chunk, Hit

    passage = Hit(Chunk("d#0", "d.txt", "The Blue Harbor library opens at 7:15; its door code is 4417.", 0, 61), 1.0)
    stated = answer_messages("What is the door code of the Blue Harbor library?", [passage])
    missing = answer_messages("Who founded the Blue Harbor library?", [passage])
    p_stated, p_missing = (generator.start_probability(m, NOT_FOUND) for m in (stated, missing))
    assert p_stated < 0.5 < p_missing, (p_stated, p_missing)
    # Barred, the model gives its best other reply; the prompt is not evaluated again.
    reply = "".join(generator.stream(missing, max_tokens=20, avoid=NOT_FOUND))
    assert reply.strip() and not reply.startswith("NOT")
    assert "4417" in "".join(generator.stream(stated, max_tokens=20, avoid=NOT_FOUND))


def test_kept_prefixes_come_back_after_other_prompts(generator: LlamaCppGenerator) -> None:
    from rag.prompting import answer_messages, answer_prefix, rewrite_messages, rewrite_prefix
    from rag.types import Chunk, Hit, Turn

    passage = Hit(Chunk("d#0", "d.txt", "The Blue Harbor library opens at 7:15; its door code is 4417.", 0, 61), 1.0)
    question = answer_messages("What is the door code of the Blue Harbor library?", [passage])
    history = [Turn("user", "When does the Blue Harbor library open?"), Turn("assistant", "At 7:15 [1].")]
    rewrite = rewrite_messages("And what is its door code?", history)
    generator.reuse_cache = False
    try:  # evaluated from scratch
        fresh = "".join(generator.stream(question, max_tokens=20))
        fresh_rewrite = "".join(generator.stream(rewrite, max_tokens=30))
    finally:
        generator.reuse_cache = True
    assert "Blue Harbor" in fresh_rewrite
    n = generator.keep_prefix(answer_prefix())
    m = generator.keep_prefix(rewrite_prefix())
    assert generator.prompt_tokens(question)[:n] == generator.prompt_tokens(answer_prefix())[:n]
    assert generator.prompt_tokens(rewrite)[:m] == generator.prompt_tokens(rewrite_prefix())[:m]
    before = generator.prefix_resumes
    list(generator.stream(FACT_QUESTION, max_tokens=5))  # another prompt takes the cache
    assert "".join(generator.stream(question, max_tokens=20)) == fresh
    assert generator.prefix_resumes == before + 1
    assert "".join(generator.stream(question, max_tokens=20)) == fresh  # straight after: cache still holds it
    assert generator.prefix_resumes == before + 1
    # The other kept prefix comes back for a rewrite, then the first for the next answer.
    assert "".join(generator.stream(rewrite, max_tokens=30)) == fresh_rewrite
    assert "".join(generator.stream(question, max_tokens=20)) == fresh
    assert generator.prefix_resumes == before + 3


def test_without_cache_reuse_results_are_bit_identical(generator: LlamaCppGenerator) -> None:
    generator.reuse_cache = False
    try:
        messages = _judge("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare.")
        first = generator.yes_probability(messages)
        reply = "".join(generator.stream(FACT_QUESTION, max_tokens=20))
        assert generator.yes_probability(messages) == first
        generator.yes_probability(_judge("Who wrote Hamlet?", "Paris is in France."))
        assert "".join(generator.stream(FACT_QUESTION, max_tokens=20)) == reply
    finally:
        generator.reuse_cache = True


def test_count_tokens(generator: LlamaCppGenerator) -> None:
    assert generator.count_tokens("") == 0
    assert 0 < generator.count_tokens("hello world") <= 3
    assert generator.count_tokens("hello world " * 50) > generator.count_tokens("hello world")


def test_a_passage_state_restored_from_disk_answers_exactly_as_a_fresh_read(
    generator: LlamaCppGenerator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The promise behind passage states: P(NOT FOUND) and the answer are the same, bit for bit."""
    from rag.prompting import NOT_FOUND, answer_messages, reading_messages
    from rag.states import StateStore
    from rag.types import Chunk, Hit

    text = (
        "The Blue Harbor library opens at 7:15 and closes at 19:30. Its door code is 4417. "
        "The reading room on the second floor holds 12,000 maps of the northern coast."
    )
    passage = Hit(Chunk("d#0", "d.txt", text, 0, len(text)), 1.0)
    questions = ["What is the door code?", "How many maps are in the reading room?", "Who founded the library?"]
    folder = tmp_path_factory.mktemp("states")
    saved = generator.states
    try:
        generator.states = StateStore(generator.id, folder, disk_bytes=10**9)
        assert generator.keep_state(reading_messages([passage])) is False  # read now, and saved
        cold = []
        for q in questions:
            generator.keep_state(reading_messages([passage]))
            messages = answer_messages(q, [passage])
            cold.append(
                (generator.start_probability(messages, NOT_FOUND), "".join(generator.stream(messages, max_tokens=24)))
            )
        # A new store over the same folder (nothing in memory) and a context that read something else.
        generator.states = StateStore(generator.id, folder, disk_bytes=10**9)
        list(generator.stream(FACT_QUESTION, max_tokens=4))
        warm = []
        for q in questions:
            assert generator.keep_state(reading_messages([passage])) is True
            messages = answer_messages(q, [passage])
            warm.append(
                (generator.start_probability(messages, NOT_FOUND), "".join(generator.stream(messages, max_tokens=24)))
            )
        assert generator.states.stats.disk_hits == 1 and generator.states.stats.rejected == 0
        assert warm == cold
        assert "4417" in cold[0][1] and cold[2][0] > cold[0][0]
    finally:
        generator.states = saved
