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


def test_contributing_layout_names_every_module_and_package():
    # The layout block is where a newcomer finds a concern's home: a module missing from it is lost.
    text = (ROOT / "CONTRIBUTING.md").read_text()
    layout = text.split("## Layout", 1)[1].split("```")[1]
    missing = []
    for folder in ("milr", "search", "models"):
        for path in sorted((ROOT / folder).iterdir()):
            name = path.name
            if name.startswith(("_", ".")) or name in ("data", "benchmarks") and folder == "milr":
                continue
            if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
                if name.removesuffix(".py") not in layout:
                    missing.append(f"{folder}/{name}")
    assert not missing, f"CONTRIBUTING.md's layout does not name: {missing}"
