"""The README documents every setting, exactly as the code defines it."""

from pathlib import Path

from rag.docs import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_has_the_current_settings_table() -> None:
    # Regenerate with: python -m rag.docs, and paste under "## Settings".
    assert settings_table() in README.read_text(encoding="utf-8")
