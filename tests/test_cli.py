"""The console command: JSON output, incremental ingest, and one clear line for bad input (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rag import cli
from tests.fakes import FakeEmbedder

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


@pytest.fixture(autouse=True)
def fake_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rag.embedding.load_embedder", lambda settings: FakeEmbedder())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_search_info_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)
    index = str(tmp_path / "index")
    code, out, _ = run(capsys, "ingest", str(corpus), "--index", index, "--json")
    first = json.loads(out)
    assert code == 0 and first["added"] == 1 and first["chunks_embedded"] == first["chunks_total"] > 0

    code, out, _ = run(capsys, "ingest", str(corpus), "--index", index, "--json")
    again = json.loads(out)
    assert again["chunks_embedded"] == 0 and again["unchanged"] == 1

    (corpus / "extra.md").write_text("# Extra\n\nA walrus named Olaf lives in Tromso harbour.\n")
    code, out, _ = run(capsys, "ingest", str(corpus), "--index", index, "--json")
    added = json.loads(out)
    assert added["added"] == 1 and 0 < added["chunks_embedded"] < first["chunks_embedded"]

    code, out, _ = run(capsys, "search", "walrus Olaf Tromso", "--index", index, "--json", "--k", "2")
    hits = json.loads(out)["hits"]
    assert code == 0 and hits[0]["doc_id"] == "extra.md"
    assert {"chunk_id", "doc_id", "start", "end", "text", "score"} <= set(hits[0])

    (corpus / "extra.md").unlink()
    code, out, _ = run(capsys, "ingest", str(corpus), "--index", index, "--json")
    assert json.loads(out)["removed"] == 1

    code, out, _ = run(capsys, "info", "--index", index, "--json")
    assert code == 0 and json.loads(out)["documents"] == 1


@pytest.mark.parametrize(
    "make_corpus",
    [
        pytest.param(lambda root: root / "missing", id="missing-path"),
        pytest.param(lambda root: (root / "empty").mkdir() or root / "empty", id="empty-folder"),
        pytest.param(
            lambda root: (root / "bin").mkdir() or (root / "bin" / "a.exe").write_bytes(b"MZ\0") or root / "bin",
            id="unsupported-files",
        ),
        pytest.param(
            lambda root: (
                (root / "fake").mkdir() or (root / "fake" / "a.txt").write_bytes(b"\0\x01\x02") or root / "fake"
            ),
            id="binary-with-txt-extension",
        ),
    ],
)
def test_bad_corpus_is_one_clear_line_and_no_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_corpus: object
) -> None:
    corpus = make_corpus(tmp_path)  # type: ignore[operator]
    code, _, err = run(capsys, "ingest", str(corpus), "--index", str(tmp_path / "index"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "index" / "CURRENT").exists()


def test_old_format_index_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(SEEDS, corpus)
    index = tmp_path / "index"
    assert run(capsys, "ingest", str(corpus), "--index", str(index))[0] == 0
    version = (index / "CURRENT").read_text().strip()
    manifest = index / version / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = 0
    manifest.write_text(json.dumps(data))
    code, _, err = run(capsys, "search", "Rason", "--index", str(index))
    assert code == 2 and "rag ingest" in err and "Traceback" not in err


def test_bad_k_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "search", "x", "--k", "0")
    assert code == 2 and "--k" in err


def test_a_bad_setting_is_one_error_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAG_REFUSE_AT", "2")
    code, out, err = run(capsys, "info")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith("error: bad setting: RAG_REFUSE_AT: Input should be less than or equal to 1")
