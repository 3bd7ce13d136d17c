"""Turn a recipe's ``prompts:`` section into tasks: an inline list, a file, or a registered suite.

Files may be plain text (one prompt per line) or JSONL in GenEval's metadata format (each line has
``prompt`` and the metadata keys ``tag``, ``include``, ``exclude``), which is what the GenEval
and MiniMUG-world critics read.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from milr.interfaces import Task
from milr.registry import SUITES


def _item_to_task(i: int, item: str | dict) -> Task:
    if isinstance(item, str):
        if not item.strip():
            raise ValueError(f"prompt item {i} is empty")
        return Task(index=i, prompt=item, metadata={}, id=f"p{i:05d}", seed=i)
    if not isinstance(item, dict):
        raise ValueError(f"prompt item {i} must be a string or a mapping, found {type(item).__name__}: {item!r}")
    if "metadata" in item:
        if not isinstance(item["metadata"], dict):
            raise ValueError(f"prompt item {i}: metadata must be a mapping, found {item['metadata']!r}")
        md = dict(item["metadata"])
        prompt = item.get("prompt") or md.get("prompt")
    else:  # a GenEval metadata line: the prompt sits beside the clauses
        md = {k: v for k, v in item.items() if k not in ("id", "seed")}
        prompt = item.get("prompt")
    if not prompt:
        raise ValueError(f"prompt item {i} has no 'prompt': {item!r}")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt item {i}: prompt must be a string, found {prompt!r}")
    md.setdefault("prompt", prompt)
    seed = item.get("seed", i)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ValueError(f"prompt item {i}: seed must be an integer in [0, 2**62), found {seed!r}")
    return Task(index=i, prompt=prompt, metadata=md, id=str(item.get("id", f"p{i:05d}")), seed=seed)


def _read_file(path: Path) -> list[str | dict]:
    items: list[str | dict] = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                items.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError) as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
        else:
            items.append(line)
    return items


def resolve_prompt_file(name: str, recipe_file: str | None = None) -> Path | None:
    """An absolute prompt-file path: beside the recipe first, then the working folder; None if absent.

    Resolved once, when the recipe loads, and stored absolute in the manifest, so a resumed run
    reads the same file wherever it is resumed from.
    """
    p = Path(name).expanduser()
    candidates = [p] if p.is_absolute() else ([Path(recipe_file).parent / p] if recipe_file else []) + [p]
    for c in candidates:
        try:
            if c.is_file():
                return c.resolve()
        except (OSError, ValueError):  # a name too long, or with a NUL byte
            return None
    return None


def load_tasks(spec, recipe_file: str | None = None) -> list[Task]:
    """Tasks for a validated :class:`milr.recipe.PromptsSpec`, filtered by tags / per_tag / limit.

    Every problem (an unreadable file, a bad item, an unknown split, two prompts with one id) is a
    :class:`~milr.recipe.RecipeError` naming the ``prompts`` key, raised before anything loads.
    """
    from milr.config import RecipeError
    from milr.errors import error_text

    key = "prompts.inline" if spec.inline is not None else "prompts.file" if spec.file is not None else "prompts"
    try:
        tasks = _load_tasks(spec, recipe_file)
    except RecipeError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise RecipeError(recipe_file, key, error_text(e)) from None
    seen: dict[str, int] = {}
    for t in tasks:
        if t.id in seen:  # the second would be skipped forever on resume (results are keyed by id)
            raise RecipeError(recipe_file, key, f"prompt id {t.id!r} is used twice (items {seen[t.id]} and {t.index}); ids must be unique")
        seen[t.id] = t.index
    return tasks


def tasks_fingerprint(tasks: list[Task]) -> str:
    """sha256 of the tasks as loaded (ids, prompts, metadata, seeds): the manifest's check on resume."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(json.dumps([t.id, t.prompt, t.metadata, t.seed], sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def _load_tasks(spec: Any, recipe_file: str | None) -> list[Task]:
    if spec.inline is not None:
        raw: list = list(spec.inline)
    elif spec.file is not None:
        p = resolve_prompt_file(spec.file, recipe_file)
        if p is None:
            raise ValueError(f"prompt file not found: {spec.file!r}")
        raw = _read_file(p)
    else:
        from milr.config import RecipeError
        from milr.errors import error_text

        suite = SUITES.get(spec.suite)
        try:
            raw = suite(split=spec.split, tags=spec.tags)
        except (ValueError, TypeError, KeyError) as e:  # an unknown split or tag, say
            key = "prompts.split" if "split" in str(e) else "prompts.tags" if "tag" in str(e) else "prompts.suite"
            raise RecipeError(recipe_file, key, f"suite {spec.suite!r}: {error_text(e)}") from None
        if not isinstance(raw, list):
            raise ValueError(f"suite {spec.suite!r} returned {type(raw).__name__}, not a list of items")
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
    if getattr(spec, "images_per_prompt", 1) > 1:
        tasks = expand_images(tasks, spec.images_per_prompt)
    for i, t in enumerate(tasks):
        t.index = i
    return tasks


# Seeds of image k > 0 of a prompt: the prompt's seed + k * stride, a prime above every suite's
# prompt seeds, so no two (prompt, image) tasks of one run share a seed.
IMAGE_SEED_STRIDE = 10_000_019


def expand_images(tasks: list[Task], n: int) -> list[Task]:
    """``n`` tasks per prompt (``<id>#<k>``, ``metadata["image_index"] = k``); image 0 keeps the prompt's seed."""
    out = []
    for t in tasks:
        for k in range(n):
            md = {**t.metadata, "image_index": k}
            out.append(Task(index=t.index, prompt=t.prompt, metadata=md, id=f"{t.id}#{k}", seed=t.seed + k * IMAGE_SEED_STRIDE))
    return out
