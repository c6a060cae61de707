"""Build eval/squad/ (corpus/ and gold.jsonl) from a SQuAD 2.0 dev file. Deterministic: same input, same output.

    python eval/squad/build.py /path/to/dev-v2.0.json

The input used for the committed files is the SQuAD 2.0 dev subset in
github.com/chrischute/squad, data/dev-v2.0.json (git blob dd01771232e5,
sha256 e67e5969b6dc...; 16 Wikipedia articles of the official dev set,
unchanged). See README.md for what this script changes.

* corpus/<Title>.txt: one file per article; the title (underscores as spaces)
  on the first line, then each paragraph, separated by blank lines. A
  paragraph's text is SQuAD's ``context`` with outer whitespace stripped.
* gold.jsonl: QUESTIONS_PER_KIND answerable and as many unanswerable
  questions, sampled with a fixed seed in proportion to each article's share,
  then split 50/50 into "tune" and "heldout" within each (article,
  answerable) group. Evidence is the sentence (or sentences) of the paragraph
  holding the first annotator's answer span. Lines alternate answerable /
  unanswerable within each split, so ``--split heldout --limit N`` is a
  balanced, fixed subset.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

SEED = 12
QUESTIONS_PER_KIND = 300  # answerable, and as many unanswerable
HERE = Path(__file__).resolve().parent

# A sentence ends at . ! or ? (plus closing quotes/brackets) followed by space and a capital, digit or quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")
_TYPES = (
    ("how many", "how_many"),
    ("how much", "how_many"),
    ("when", "when"),
    ("what year", "when"),
    ("who", "who"),
    ("whom", "who"),
    ("whose", "who"),
    ("where", "where"),
    ("why", "why"),
    ("which", "which"),
    ("how", "how"),
    ("what", "what"),
)


def question_type(question: str) -> str:
    """A coarse type from the question's wording, for the report's per-type table.

    >>> question_type("In what year did the Normans arrive?")
    'when'
    >>> question_type("How many shells were sent?")
    'how_many'
    """
    q = question.lower()
    for phrase, kind in _TYPES:
        if re.search(rf"\b{phrase}\b", q):
            return kind
    return "other"


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (whitespace between them belongs to none).

    >>> sentence_spans("It rained. Then it (mostly) stopped! 3 days later.")
    [(0, 10), (11, 36), (37, 50)]
    """
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start() + len(m.group().rstrip())))
        start = m.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def evidence_for(context: str, start: int, end: int) -> str:
    """The sentence(s) of ``context`` covering ``[start, end)``."""
    covering = [(s, e) for s, e in sentence_spans(context) if s < end and e > start]
    return context[covering[0][0] : covering[-1][1]]


def main(src: Path) -> None:
    data = json.loads(src.read_text(encoding="utf-8"))["data"]
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    for old in corpus.glob("*.txt"):
        old.unlink()

    pools: dict[bool, list[dict[str, object]]] = {True: [], False: []}
    for article in data:
        title = article["title"]
        doc_id = f"{title}.txt"
        paragraphs = [p["context"].strip() for p in article["paragraphs"]]
        (corpus / doc_id).write_text(title.replace("_", " ") + "\n\n" + "\n\n".join(paragraphs) + "\n", "utf-8")
        for p, context in zip(article["paragraphs"], paragraphs, strict=True):
            lead = len(p["context"]) - len(p["context"].lstrip())
            for qa in p["qas"]:
                question = " ".join(qa["question"].split())
                row: dict[str, object] = {"squad_id": qa["id"], "question": question, "doc_id": doc_id}
                if qa["is_impossible"]:
                    row.update(answers=[], evidence="", answerable=False, type="unanswerable")
                else:
                    first = qa["answers"][0]
                    start = first["answer_start"] - lead
                    end = start + len(first["text"])
                    assert context[start:end] == first["text"], qa["id"]
                    answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"] if a["text"].strip()))
                    row.update(
                        answers=answers,
                        evidence=evidence_for(context, start, end),
                        answerable=True,
                        type=question_type(question),
                    )
                pools[not qa["is_impossible"]].append(row)

    rng = random.Random(SEED)
    splits: dict[str, dict[bool, list[dict[str, object]]]] = {"tune": {True: [], False: []}, "heldout": {True: [], False: []}}
    for answerable, pool in pools.items():
        chosen = rng.sample(pool, QUESTIONS_PER_KIND)
        by_doc: dict[str, list[dict[str, object]]] = {}
        for row in chosen:
            by_doc.setdefault(str(row["doc_id"]), []).append(row)
        for doc_id in sorted(by_doc):
            group = by_doc[doc_id]
            rng.shuffle(group)
            half = (len(group) + rng.randint(0, 1)) // 2  # odd groups: a coin decides which split gets the extra one
            splits["tune"][answerable] += group[:half]
            splits["heldout"][answerable] += group[half:]

    lines: list[str] = []
    n = 0
    for split in ("tune", "heldout"):
        yes, no = splits[split][True], splits[split][False]
        rng.shuffle(yes)
        rng.shuffle(no)
        mixed = [row for pair in zip(yes, no, strict=False) for row in pair]
        longer = yes if len(yes) > len(no) else no
        mixed += longer[min(len(yes), len(no)) :]
        for row in mixed:
            n += 1
            out = {
                "id": f"sq{n:03d}",
                "question": row["question"],
                "answers": row["answers"],
                "evidence": row["evidence"],
                "doc_id": row["doc_id"],
                "answerable": row["answerable"],
                "type": row["type"],
                "split": split,
                "squad_id": row["squad_id"],
            }
            lines.append(json.dumps(out, ensure_ascii=False))
    (HERE / "gold.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(data)} documents, {len(lines)} questions -> {HERE}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
