"""Shared fixtures: the headless browser launch, and the real models loaded once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
SEEDS = Path(__file__).resolve().parents[1] / "seeds"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    # Debian's chromium, never `playwright install` (it downloads a browser and fails offline).
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (or deselect with -m 'not browser')")
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        # Without the background-networking flags Chromium's own connections fail noisily offline.
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


@pytest.fixture(scope="session")
def real_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings over a private copy of seeds/ with its own index (the default cache for the model)."""
    root = tmp_path_factory.mktemp("real")
    shutil.copytree(SEEDS, root / "corpus")
    return Settings(corpus_dir=root / "corpus", index_dir=root / "index")


@pytest.fixture(scope="session")
def real_embedder(real_settings: Settings) -> Any:
    """The real embedder, loaded once for every slow test that needs it."""
    from rag.embedding import load_embedder

    return load_embedder(real_settings)


@pytest.fixture(scope="session")
def real_generator(real_settings: Settings) -> Any:
    """The real generator, loaded once for every slow test that needs it."""
    from rag.generation import load_generator

    return load_generator(real_settings)


@pytest.fixture(scope="session")
def real_pipeline(real_settings: Settings, real_embedder: Any, real_generator: Any) -> Iterator[Any]:
    """The real embedder and generator over seeds/, shared by every slow test that asks about it."""
    from rag.ingest import ingest
    from rag.pipeline import build_pipeline

    ingest(real_settings.corpus_dir, real_settings.index_dir, real_embedder, real_settings, progress=False)
    yield build_pipeline(real_settings, embedder=real_embedder, generator=real_generator)
