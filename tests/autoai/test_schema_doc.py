"""docs/schema.md is what ``scripts/schema_doc.py`` renders from ``autoai.schema``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_schema_page_is_generated_from_the_models() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "schema_doc.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_every_model_of_the_schema_has_a_section() -> None:
    from pydantic import BaseModel

    import autoai.schema

    page = (ROOT / "docs" / "schema.md").read_text()
    models = [
        name
        for name in autoai.schema.__all__
        if name not in ("Document", "Request")
        and isinstance(obj := getattr(autoai.schema, name), type)
        and issubclass(obj, BaseModel)
    ]
    assert models, "autoai.schema exports no model"
    missing = [n for n in models if f"## `{n}`" not in page]
    assert not missing, f"docs/schema.md lacks {missing}"
