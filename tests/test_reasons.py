"""The one registry of reject reasons, and the README sections rendered from the code.

That every reason is *raised* by some test is checked at the end of a whole-suite
run (tests/conftest.py); here: each is described, categorised, expected by name in
some test, and documented in the README exactly as the code renders it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from fedcoin.errors import Category, InvalidBlock, InvalidTransaction, OrphanBlock, Reason, StaleBlock

ROOT = Path(__file__).resolve().parents[1]


def render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_every_reason_is_described_categorised_and_expected_by_some_test(reason):
    assert reason.description and isinstance(reason.category, Category)
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", reason.value)
    names = (f'"{reason.value}"', f"Reason.{reason.name}")
    tests = [p for p in ROOT.joinpath("tests").glob("test_*.py") if p.name != "test_reasons.py"]
    used = [p.name for p in tests if any(n in p.read_text() for n in names)]
    assert used, f"no test expects {reason.value}"


def test_categories_follow_what_the_reason_means():
    assert Reason.ORPHAN_BLOCK.category == Category.MISSING_PARENT
    assert Reason.STALE_BLOCK.category == Category.STALE
    local = {r for r in Reason if r.category == Category.LOCAL}
    assert local == {
        Reason.TIME_TOO_NEW,
        Reason.SHAPLEY_FAR_FROM_LOCAL,
        Reason.NONCE_TOO_FAR_AHEAD,
        Reason.NONCE_CONFLICT,
        Reason.MEMPOOL_FULL,
    }
    assert OrphanBlock("x").category == Category.MISSING_PARENT and StaleBlock("x").category == Category.STALE


def test_rejections_carry_a_registered_reason():
    assert InvalidBlock("bad-merkle-root", "m").reason is Reason.BAD_MERKLE_ROOT
    assert InvalidTransaction(Reason.BAD_NONCE, "m").reason == "bad-nonce"
    with pytest.raises(ValueError):
        InvalidBlock("bad-task", "split into missing-task, task-mismatch, bad-task-signature, bad-shapley-length")


def test_the_readme_is_rendered_from_the_code():
    docs = render_docs()
    text = (ROOT / "README.md").read_text()
    assert docs.render(text) == text, "README.md is out of date: run `make docs`"
    for reason in Reason:
        assert f"| `{reason.value}` | {reason.category.value} |" in text
