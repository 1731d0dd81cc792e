"""The README's set-up and dtype claims, held against the Makefile, pyproject.toml and the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _floor(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))


def test_torch_floor_is_what_the_code_needs():
    text = (ROOT / "pyproject.toml").read_text()
    spec = re.search(r'"torch([^"]*)"', text).group(1)
    uses_gqa = any("enable_gqa" in p.read_text() for p in (ROOT / "src").rglob("*.py"))
    # scaled_dot_product_attention(enable_gqa=...) first shipped in torch 2.5
    assert not uses_gqa or _floor(spec) >= (2, 5), f"pyproject allows torch{spec}, the code needs 2.5"


def test_readme_names_the_torch_the_makefile_installs():
    pinned = re.search(r"install torch==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    readme = (ROOT / "README.md").read_text()
    assert f"torch=={pinned}" in readme
    assert "a CPU build of\ntorch where there is no GPU" not in readme  # the old, untrue claim


def test_readme_dtype_auto_matches_pick_dtype(monkeypatch):
    import torch

    from tailor import models

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    picked = models.pick_dtype("auto", "cuda")
    readme = " ".join((ROOT / "README.md").read_text().split())
    claim = "float16 on a CUDA GPU without bf16"
    assert (picked == torch.float16) == (claim in readme)
