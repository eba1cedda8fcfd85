"""The README and docs/ are the user's manual: keep their promises checked."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import env_name
from gateway.config_reference import END, START, reference_markdown, table_on_page
from gateway.config_settings import FILE_ONLY, RELOADABLE, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()


def test_the_configuration_page_is_generated_from_config():
    assert START in CONFIGURATION and END in CONFIGURATION
    assert table_on_page(CONFIGURATION) == reference_markdown(), (
        "docs/configuration.md and Config disagree: run "
        "`python -m gateway.config_reference --write docs/configuration.md`"
    )


def test_every_setting_is_documented_with_its_environment_variable():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", CONFIGURATION, re.M)}
    assert set(rows) == set(SETTINGS)
    for name in SETTINGS:
        if name not in FILE_ONLY:
            assert f"`{env_name(name)}`" in rows[name]
        assert ("| reload |" in rows[name]) == (name in RELOADABLE)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = [line for line in ci.splitlines() if "python -m pytest" in line]
    readme_command = next(
        b.strip() for b in re.findall(r"```sh\n(.*?)```", README, re.S) if "python -m pytest" in b
    )
    # CI may run more after the test command (static checks), never something else before it.
    assert command == readme_command or command.startswith(readme_command + " && ")


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_nothing_links_outside_the_repository():
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        text = page.read_text()
        for outside in ("../" + "shared", "acs-" + "protocol"):  # the team's notes, not shipped
            assert outside not in text, f"{page.name} cites {outside}"
        for target in re.findall(r"\]\(([^)]+)\)", text):
            assert target.startswith(("https://", "#")) or not re.match(r"\w+:", target), target
            if not target.startswith(("https://", "#")):
                path = (page.parent / target.split("#")[0]).resolve()
                assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: {target}"


def test_the_quick_start_says_it_serves_without_authentication():
    lines = README.splitlines()
    at = next(i for i, line in enumerate(lines) if "acs-media-gateway serve" in line)
    near = "\n".join(lines[at : at + 8])
    assert "0.0.0.0 with authentication off" in near
    assert "(docs/security.md)" in near


def test_install_hints_have_one_form():
    # users install by the package's name; only contributors use the checkout's `.[test]`
    texts = {p.name: p.read_text() for p in [ROOT / "README.md", *DOCS.glob("*.md")]}
    texts |= {str(p): p.read_text() for p in (ROOT / "gateway").rglob("*.py")}
    for name, text in texts.items():
        for extra in re.findall(r"pip install [^\n`]*?\.?\[[\w,]+\]", text):
            assert "'acs-media-gateway[" in extra or extra.endswith("'.[test]"), (name, extra)
