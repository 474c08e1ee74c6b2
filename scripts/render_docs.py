"""Render the README's generated sections from the code they document.

Sections between ``<!-- generated:NAME -->`` and ``<!-- end:NAME -->`` markers are
replaced by the rendering of NAME:

``settings``  one table per role, from the settings models (fedcoin.node.settings)
``reasons``   the reject reasons and their categories (fedcoin.errors.Reason)

    python scripts/render_docs.py            # rewrite README.md
    python scripts/render_docs.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from fedcoin.errors import Category, Reason
from fedcoin.node.settings import ROLES, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def render_settings() -> str:
    parts = []
    for role, cls in ROLES.items():
        parts.append(f"**{role}** ({cls.__doc__})\n\n{markdown_table(cls)}")
    return "\n\n".join(parts)


def render_reasons() -> str:
    lines = ["| reason | category | meaning |", "| --- | --- | --- |"]
    for reason in Reason:
        lines.append(f"| `{reason.value}` | {reason.category.value} | {reason.description} |")
    legend = ", ".join(f"`{c.value}`" for c in Category)
    return "\n".join(lines) + f"\n\nCategories: {legend} (see `fedcoin.errors`)."


SECTIONS: dict[str, Callable[[], str]] = {"settings": render_settings, "reasons": render_reasons}


def fill(text: str, name: str, body: str) -> str:
    """``text`` with the generated section ``name`` replaced by ``body``."""
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no generated:{name} section")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def render(text: str) -> str:
    for name, fn in SECTIONS.items():
        text = fill(text, name, fn())
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    current = README.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
