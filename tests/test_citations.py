"""Citation parsing and verification (pure functions, no models)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rag.citations import parse_answer, support, terms, verify
from rag.types import Chunk, Hit

RASON = "Pyongyang reportedly supplied nearly three million shells transported from the port of Rason in North Korea."
MISSILE = "On October 30, 2024, North Korea tested an intercontinental missile which traveled 7,000 kilometers."
HITS = [
    Hit(Chunk("d#0", "d.txt", MISSILE, 0, len(MISSILE)), 1.0),
    Hit(Chunk("d#1", "d.txt", RASON, 200, 200 + len(RASON)), 0.9),
]


def test_parse_attaches_trailing_markers_to_previous_sentence() -> None:
    parsed = parse_answer("It was shipped from Rason. [2] The missile flew 7,000 km [1][2].")
    assert [p.markers for p in parsed] == [(2,), (1, 2)]
    assert parsed[0].text == "It was shipped from Rason."
    assert "[" not in parsed[1].text


def test_supported_sentence_keeps_its_citation_and_span() -> None:
    checked = verify("The shells were shipped from the port of Rason [2].", "Which port?", HITS)
    assert [s.supported for s in checked.sentences] == [True]
    (citation,) = checked.citations
    assert citation.marker == 2 and citation.chunk_id == "d#1"
    assert citation.start == 200 and citation.text == RASON
    # the span lies inside the cited passage's source range
    assert citation.span_start is not None and citation.span_end is not None
    assert citation.start <= citation.span_start < citation.span_end <= citation.end
    assert checked.supported_text == "The shells were shipped from the port of Rason [2]."


def test_wrong_marker_is_recited_to_the_supporting_passage() -> None:
    checked = verify("The shells left from the port of Rason [1].", "Which port?", HITS)
    assert checked.sentences[0].supported
    assert checked.sentences[0].markers == (2,)
    assert any("re-cited" in n for n in checked.notes)


def test_missing_marker_gets_one_added() -> None:
    checked = verify("The missile traveled 7,000 kilometers.", "How far did it fly?", HITS)
    assert checked.sentences[0].markers == (1,)


def test_invented_name_or_number_is_dropped() -> None:
    checked = verify(
        "The missile was the Hwasong-19 [1]. It traveled 9,000 kilometers [1].", "What was the missile?", HITS
    )
    assert [s.supported for s in checked.sentences] == [False, False]
    assert checked.citations == ()
    assert checked.supported_text == ""


def test_a_number_in_another_unit_than_asked_is_dropped() -> None:
    # The passage gives 7,000 in kilometres: not an answer to "how many minutes".
    wrong = verify("The flight lasted 7,000 kilometers [1].", "How many minutes did the flight last?", HITS)
    assert [s.supported for s in wrong.sentences] == [False]
    assert wrong.citations == ()
    # Same unit kind, other spelling: kept.
    right = verify("It traveled 7,000 kilometers [1].", "How many miles did the missile travel?", HITS)
    assert [s.supported for s in right.sentences] == [True]
    # Counts of things are not checked by unit: "troops" may be the passage's "shells" or "soldiers".
    counted = verify("Nearly three million shells [2].", "How many rounds did Pyongyang supply?", HITS)
    assert [s.supported for s in counted.sentences] == [True]


def test_a_date_made_of_two_dates_is_dropped() -> None:
    passage = "North Korea tested a missile on October 30, 2024, the first since December 2023."
    hits = [Hit(Chunk("m#0", "m.txt", passage, 0, len(passage)), 1.0)]
    # Day and month from one date, year from the other: every term is in the passage, the date is not.
    mixed = verify("The previous test was on October 30, 2023 [1].", "When was the previous test?", hits)
    assert [s.supported for s in mixed.sentences] == [False]
    kept = verify("The previous test was in December 2023 [1].", "When was the previous test?", hits)
    assert [s.supported for s in kept.sentences] == [True]


def test_marker_outside_passages_is_removed() -> None:
    checked = verify("The missile traveled 7,000 kilometers [7].", "How far?", HITS)
    assert all(1 <= m <= len(HITS) for s in checked.sentences for m in s.markers)
    assert any("outside" in n for n in checked.notes)


def test_number_words_match_digits() -> None:
    assert "3" in terms("three") and "7000" in terms("7,000")
    ok = support("About 3 million shells came from Rason.", terms(RASON), set(), 0.6)
    assert ok.supported


@given(st.text(max_size=200), st.lists(st.integers(min_value=-3, max_value=9), max_size=5))
def test_parsed_citations_never_point_outside_the_passages(text: str, markers: list[int]) -> None:
    raw = text + "".join(f" [{m}]" for m in markers)
    checked = verify(raw, "q", HITS)
    for citation in checked.citations:
        assert 1 <= citation.marker <= len(HITS)
    for sentence in checked.sentences:
        if sentence.supported:
            assert all(1 <= m <= len(HITS) for m in sentence.markers)


def test_marker_only_reply_quotes_the_cited_passage() -> None:
    checked = verify("[2]", "Which port did the shells leave from?", HITS)
    (sentence,) = checked.sentences
    assert sentence.supported and sentence.markers == (2,)
    assert "Rason" in sentence.text and sentence.text in RASON
    assert any("only the marker" in n for n in checked.notes)


def test_verified_stream_sends_only_sentences_that_pass() -> None:
    from rag.drafting import Draft, verified_stream

    hit = Hit(Chunk("a#0", "a.txt", "The munitions were shipped from the port of Rason in 2024.", 0, 58), 1.0)
    raw = "They were shipped from Rason [1]. They were paid in gold [1]. In 2024 [1]."
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    out = list(verified_stream(pieces, "Which port?", [hit], min_support=0.6))
    draft = out[-1]
    assert isinstance(draft, Draft) and draft.raw == raw
    text = [p for p in out[:-1] if isinstance(p, str)]
    assert "".join(text) == draft.verified.supported_text
    assert "gold" not in "".join(text) and len(text) == 2  # one piece per verified sentence
