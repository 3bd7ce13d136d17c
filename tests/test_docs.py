"""The README's set-up commands stay true: CI runs exactly the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, re.S)


def test_readme_has_two_setup_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "milr run quickstart" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1].strip() in [line.strip() for line in ci]


def test_every_docs_path_the_code_cites_exists():
    """A ``docs/...`` path named in code, recipes, tests or docs resolves in the repository."""
    cited = re.compile(r"(?<![\w./-])docs/[\w./-]*\w")  # not part of a URL or a longer path
    folders = ("milr", "critics", "search", "models", "benchmarks", "recipes", "tests", "docs")
    files = [p for f in folders for p in (ROOT / f).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    files += [ROOT / "CONTRIBUTING.md", ROOT / "README.md"]
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in files for m in cited.findall(p.read_text())
                      if not (ROOT / m).exists()})
    assert len(files) > 100 and not missing, missing
