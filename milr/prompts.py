"""Turn a recipe's ``prompts:`` section into tasks: an inline list, a file, or a registered suite.

Files may be plain text (one prompt per line) or JSONL in GenEval's metadata format (each line has
``prompt`` and the metadata keys ``tag``, ``include``, ``exclude``), which is what the GenEval
and MiniMUG-world critics read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from milr.interfaces import Task
from milr.registry import SUITES


def _item_to_task(i: int, item: str | dict) -> Task:
    if isinstance(item, str):
        return Task(index=i, prompt=item, metadata={}, id=f"p{i:05d}", seed=i)
    if "metadata" in item:
        md = dict(item["metadata"])
        prompt = item.get("prompt") or md.get("prompt")
    else:  # a GenEval metadata line: the prompt sits beside the clauses
        md = {k: v for k, v in item.items() if k not in ("id", "seed")}
        prompt = item.get("prompt")
    if not prompt:
        raise ValueError(f"prompt item {i} has no 'prompt': {item!r}")
    md.setdefault("prompt", prompt)
    return Task(index=i, prompt=prompt, metadata=md, id=str(item.get("id", f"p{i:05d}")), seed=int(item.get("seed", i)))


def _read_file(path: Path) -> list[str | dict]:
    items: list[str | dict] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
        else:
            items.append(line)
    return items


def load_tasks(spec, recipe_file: str | None = None) -> list[Task]:
    """Tasks for a validated :class:`milr.recipe.PromptsSpec`, filtered by tags / per_tag / limit."""
    if spec.inline is not None:
        raw: list = list(spec.inline)
    elif spec.file is not None:
        p = Path(spec.file)
        if not p.is_file() and recipe_file:
            p = Path(recipe_file).parent / spec.file
        raw = _read_file(p)
    else:
        raw = SUITES.get(spec.suite)(split=spec.split, tags=spec.tags)
    tasks = [_item_to_task(i, it) for i, it in enumerate(raw)]
    if spec.tags:
        tasks = [t for t in tasks if t.metadata.get("tag") in spec.tags]
    if spec.per_tag:
        seen: dict[str, int] = defaultdict(int)
        kept = []
        for t in tasks:
            tag = t.metadata.get("tag", "")
            if seen[tag] < spec.per_tag:
                seen[tag] += 1
                kept.append(t)
        tasks = kept
    if spec.limit:
        tasks = tasks[: spec.limit]
    for i, t in enumerate(tasks):
        t.index = i
    return tasks
