"""Render the settings table the README embeds, so the docs cannot drift from the code."""

from __future__ import annotations

from rag.settings import Settings


def settings_table() -> str:
    """Markdown table of every setting: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "~/.cache/rag" if name == "cache_dir" else ("(none)" if default is None else str(default))
        rows.append(f"| `RAG_{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
