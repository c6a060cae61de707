"""Generation backends without downloads: a tiny random transformers model built here."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from rag.errors import InputError, ModelError
from rag.generation import load_generator, plain_chat_prompt, two_way_softmax, yes_no_token_ids
from rag.generation_hf import TransformersGenerator
from rag.settings import Settings

SENTENCES = [
    "the cat sat on the mat .",
    "a dog ran in the park and the cat slept .",
    "Yes , the answer is in the passage .",
    "No , the passage does not say .",
    "user assistant system : question answer context",
    "where is the cat ? the cat is on the mat .",
]

# A minimal ChatML-like template, as instruct models ship.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)


def _build_tiny_model(folder: Path, *, chat_template: str | None) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # A word-level vocabulary: every token is one word, so decoding then re-encoding
    # gives back exactly as many tokens as were generated.
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    if chat_template:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,  # large random weights: varied greedy output instead of one repeated token
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_tiny_model(tmp_path_factory.mktemp("tiny-plain"), chat_template=None)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_tiny_model(tmp_path_factory.mktemp("tiny-chat"), chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain_gen(plain_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(plain_dir, n_threads=1)


@pytest.fixture(scope="module")
def chat_gen(chat_dir: Path) -> TransformersGenerator:
    return TransformersGenerator(chat_dir, n_threads=1)


MESSAGES = [
    {"role": "system", "content": "answer from the context"},
    {"role": "user", "content": "where is the cat ?"},
]


def _reply(gen: TransformersGenerator, max_tokens: int, messages: list[dict[str, str]] = MESSAGES) -> str:
    return "".join(gen.stream(messages, max_tokens=max_tokens))


def test_streams_deterministic_non_empty_output(chat_gen: TransformersGenerator, chat_dir: Path) -> None:
    pieces = list(chat_gen.stream(MESSAGES, max_tokens=12))
    text = "".join(pieces)
    assert text.strip()
    assert _reply(chat_gen, 12) == text
    # A freshly loaded copy of the same model answers the same.
    assert _reply(TransformersGenerator(chat_dir, n_threads=1), 12) == text
    # Special tokens are generated but not shown, so the text can hold fewer tokens than were made.
    assert chat_gen.count_tokens(text) <= chat_gen.last_completion_tokens <= 12


def test_respects_max_tokens(chat_gen: TransformersGenerator) -> None:
    short, long = _reply(chat_gen, 3), _reply(chat_gen, 15)
    assert 0 < chat_gen.count_tokens(short) <= 3
    assert chat_gen.count_tokens(long) > 3
    # Greedy decoding: a shorter budget yields a prefix of the longer reply.
    assert long.startswith(short)


def test_different_prompts_give_different_replies(chat_gen: TransformersGenerator) -> None:
    other = [{"role": "user", "content": "a dog ran in the park"}]
    assert _reply(chat_gen, 10, other) != _reply(chat_gen, 10)


def test_chat_template_is_applied(chat_gen: TransformersGenerator) -> None:
    prompt = chat_gen.format_prompt(MESSAGES)
    assert prompt.startswith("<s> system : answer from the context </s>")
    assert prompt.endswith("<s> assistant : ")
    assert chat_gen.last_prompt_tokens >= 0
    list(chat_gen.stream(MESSAGES, max_tokens=2))
    assert chat_gen.last_prompt_tokens == chat_gen.count_tokens(prompt)


def test_works_without_chat_template(plain_gen: TransformersGenerator) -> None:
    assert plain_gen.format_prompt(MESSAGES) == plain_chat_prompt(MESSAGES)
    text = _reply(plain_gen, 8)
    assert text.strip()
    assert _reply(plain_gen, 8) == text


def test_abandoned_stream_frees_the_model(chat_gen: TransformersGenerator) -> None:
    stream = chat_gen.stream(MESSAGES, max_tokens=50)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    stream.close()  # a client that went away; the worker thread must stop and release the lock
    assert _reply(chat_gen, 12).startswith(first)


def test_yes_probability_is_a_deterministic_probability(chat_gen: TransformersGenerator) -> None:
    question = [{"role": "user", "content": "is the cat on the mat ?"}]
    p = chat_gen.yes_probability(question)
    assert 0.0 < p < 1.0
    assert chat_gen.yes_probability(question) == p
    assert chat_gen.yes_probability([{"role": "user", "content": "a dog ran"}]) != p


def test_an_avoided_start_is_never_the_first_token(chat_gen: TransformersGenerator) -> None:
    free = _reply(chat_gen, 6)
    first_word = free.split()[0]
    p = chat_gen.start_probability(MESSAGES, first_word)
    assert 0.0 < p <= 1.0 and p == chat_gen.start_probability(MESSAGES, first_word)
    barred = "".join(chat_gen.stream(MESSAGES, max_tokens=6, avoid=first_word))
    assert barred and not barred.startswith(first_word)


def test_id_is_the_folder_name(chat_gen: TransformersGenerator, chat_dir: Path) -> None:
    assert chat_gen.id == chat_dir.name


def test_yes_no_helpers() -> None:
    vocab = {"Yes": 5, "yes": 6, "No": 7, " no": 8}
    yes, no = yes_no_token_ids(lambda s: [vocab[s]] if s in vocab else [])
    assert (yes, no) == ([5, 6], [7, 8])
    logits = [0.0] * 9
    assert two_way_softmax(logits, yes, no) == pytest.approx(0.5)
    logits[5] = 3.0
    assert two_way_softmax(logits, yes, no) > 0.9
    assert two_way_softmax([1000.0, -1000.0], [0], [1]) == pytest.approx(1.0)  # no overflow
    with pytest.raises(ModelError):
        two_way_softmax(logits, [], no)


def test_load_generator_transformers(chat_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="RAG_GENERATOR_PATH"):
        load_generator(Settings(generator="transformers", generator_path=None))
    with pytest.raises(InputError, match="does not exist"):
        load_generator(Settings(generator="transformers", generator_path=tmp_path / "nope"))
    gen = load_generator(Settings(generator="transformers", generator_path=chat_dir, n_threads=1))
    assert isinstance(gen, TransformersGenerator)
    assert gen.id == chat_dir.name


def test_load_generator_llama_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a GGUF file"):
        load_generator(Settings(generator="llama", generator_path=tmp_path / "missing.gguf"))
