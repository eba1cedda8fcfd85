"""The configuration reference: a Markdown table made from `Config`'s field metadata.

Owns: how a setting is shown in `docs/configuration.md` (name, default, environment variable,
whether SIGHUP applies it, meaning). Never: states a setting's default or meaning itself; it
only reads the public names of `gateway.config_settings` and `gateway.config`, so the page
cannot say what the code does not.

Regenerate the page's table (between its two marker comments) from the repository root:

    python -m gateway.config_reference --write docs/configuration.md

Without `--write` the table is printed. `tests/test_docs.py` fails when the page and `Config`
disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

import attrs

from .config import env_name
from .config_settings import FILE_ONLY, RELOADABLE, Config

START: Final = "<!-- config-reference:start (generated: python -m gateway.config_reference) -->"
END: Final = "<!-- config-reference:end -->"
HEADER: Final = "| setting | default | environment | SIGHUP | meaning |\n|---|---|---|---|---|\n"


def _default(field: attrs.Attribute[Any]) -> str:
    value: object = field.default
    factory = getattr(value, "factory", None)  # an attrs.Factory: show what it makes
    if callable(factory):
        value = factory()
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    return f"`{value}`"


def _row(field: attrs.Attribute[Any]) -> str:
    name = field.name
    environment = "(file only)" if name in FILE_ONLY else f"`{env_name(name)}`"
    sighup = "reload" if name in RELOADABLE else "restart"
    meaning = str(field.metadata.get("doc", "")).replace("|", "\\|")
    return f"| `{name}` | {_default(field)} | {environment} | {sighup} | {meaning} |\n"


def reference_markdown() -> str:
    """The table, one row per setting, in `Config`'s field order."""
    return HEADER + "".join(_row(field) for field in attrs.fields(Config))


def replace_between_markers(page: str, table: str) -> str:
    """`page` with the text between START and END replaced by `table`."""
    before, start, rest = page.partition(START)
    _, end, after = rest.partition(END)
    if not start or not end:
        raise ValueError(f"the page has no {START!r} ... {END!r} markers")
    return f"{before}{START}\n{table}{END}{after}"


def table_on_page(page: str) -> str:
    """The text between the page's markers (what `replace_between_markers` wrote there)."""
    _, _, rest = page.partition(START)
    inside, _, _ = rest.partition(END)
    return inside.removeprefix("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.config_reference")
    parser.add_argument("--write", metavar="PAGE", help="rewrite the table inside this page")
    args = parser.parse_args(argv)
    table = reference_markdown()
    if args.write is None:
        sys.stdout.write(table)
        return 0
    page = Path(args.write)
    page.write_text(replace_between_markers(page.read_text(), table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
