"""The package's shape: layers import only downward, no web framework, no experiment paths."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import fedcoin

ROOT = Path(fedcoin.__file__).parent
#: Bottom to top: a module may import the layers before its own, and its own.
LAYERS = [
    "errors",
    "chain",
    "fl",
    "valuation",
    "consensus",
    "ledger",
    "api",
    "client",
    "node",
    "devnet",
    "flower",
    "cli",
]
PACKAGES = [p for p in LAYERS if (ROOT / p).is_dir()]
WEB_FRAMEWORKS = {"fastapi", "starlette", "flask", "uvicorn", "aiohttp", "django"}
#: Third-party imports a layer may not use (everything above may).
FORBIDDEN = {
    "errors": {"torch", "numpy", "httpx", "pydantic", "cryptography"},
    "chain": {"torch", "httpx"},
    "fl": {"httpx"},
    "valuation": {"httpx"},
    "consensus": {"torch", "httpx"},
    "ledger": {"torch", "httpx"},
    "api": {"torch", "httpx"},
    "client": {"torch"},
}


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0].removesuffix(".py") if len(rel) > 1 or rel[0] != "__init__.py" else "errors"


def imported(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports."""
    tree = ast.parse(path.read_text())
    package = ["fedcoin", *path.relative_to(ROOT).parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.append(node.module)
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_downward(path):
    own = LAYERS.index(layer_of(path))
    for name in imported(path):
        parts = name.split(".")
        if parts[0] == "fedcoin" and len(parts) > 1:
            target = parts[1]
            if target in LAYERS:
                assert LAYERS.index(target) <= own, f"{path.name} ({LAYERS[own]}) imports {name} from above"
        assert parts[0] not in WEB_FRAMEWORKS, f"{path.name} imports the web framework {parts[0]}"
        assert parts[0] not in FORBIDDEN.get(LAYERS[own], set()), f"{path.name} ({LAYERS[own]}) imports {parts[0]}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_experiment_paths(path):
    text = path.read_text()
    assert "/work/shared" not in text and "../shared" not in text


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    owns, may = doc.split("\n\n")  # what it owns; what it may import
    assert owns.strip() and may.startswith("May import:"), doc
    for other in LAYERS[LAYERS.index(package) + 1 :]:
        assert not re.search(rf"fedcoin\.{other}\b", may), f"{package} claims it may import {other}, which is above it"
    for below in LAYERS[1 : LAYERS.index(package)]:
        assert re.search(rf"fedcoin\.{below}\b", may), f"{package} does not say it may import {below}"


def test_every_module_is_in_a_layer():
    assert {layer_of(p) for p in modules()} <= set(LAYERS)
    assert set(PACKAGES) == set(LAYERS) - {"errors", "cli"}


def test_every_package_is_installed():
    """A subpackage missing from pyproject's list works in the editable checkout and is absent from the image."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"fedcoin." + ".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.rglob("__init__.py")} - {"fedcoin."}
    assert found | {"fedcoin"} <= listed
