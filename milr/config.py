"""One config system for every command: YAML with limits, ``extends``, dotted overrides, errors.

``milr run``/``show``/``compare``/``calibrate``/``agree`` (run recipes, :mod:`milr.recipe`),
``milr train-critic`` (:mod:`milr.training.config`), ``milr train-detector``
(:mod:`milr.training.detector`) and ``milr train minimug`` (:mod:`milr.models.minimug.train`) read
their files through :func:`load_data` and validate them with a pydantic schema whose errors
:func:`schema_errors` turns into one line per problem naming the file, the key path, what was
found and what is allowed, with a did-you-mean (exit 2 in the CLI, no traceback).

One merge rule for ``extends:`` and for command-line overrides, LightningCLI's
(lightning.ai/docs/pytorch/stable/cli/lightning_cli_advanced_3.html): dicts merge key by key,
lists and scalars are replaced, and a block that *switches* to another thing is replaced whole
rather than merged -- a component given a different ``name`` drops the parent's arguments of the
old component (they would be unknown arguments of the new one), and a prompt block that switches
source (``suite`` -> ``file``, or another suite) drops the old source's key. What counts as "the
same thing" is the schema's :class:`MergeRule`; an override ``search.name=best_of_n`` is
merged exactly as a child recipe's ``search: {name: best_of_n}`` is.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Callable, Hashable, Optional

import yaml

from milr.errors import UserError

class RecipeError(UserError, ValueError):
    """A recipe (or training config) problem, located by file and key path."""

    kind = "recipe"

    def __init__(self, file: str | None, path: str, problem: str):
        self.file = file
        self.path = path
        self.problem = problem
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{path or '<root>'}: {problem}")


class RecipeErrors(RecipeError):
    """Several problems found at once (all are reported, not just the first)."""

    def __init__(self, errors: list[RecipeError]):
        self.errors = errors
        ValueError.__init__(self, "\n".join(str(e) for e in errors))
        self.file, self.path, self.problem = errors[0].file, errors[0].path, errors[0].problem


def raise_all(errors: list[RecipeError]) -> None:
    """Raise the problems found (one, or all together); nothing when the list is empty."""
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)


def did_you_mean(word: str, allowed: list[str] | tuple[str, ...], n: int = 2) -> str:
    """``"; did you mean 'x'?"`` for the close matches of ``word`` in ``allowed``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(allowed), n=n, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


# ---------------------------------------------------------------------------------------------
# Files: shipped recipes, YAML with limits
# ---------------------------------------------------------------------------------------------
def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped in the package, by stem (``quickstart`` -> .../recipes/quickstart.yaml)."""
    from importlib import resources

    root = resources.files("milr.recipes")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe_path(ref: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file path, or the name of a shipped recipe."""
    p = Path(ref)
    candidates = [p]
    if relative_to is not None and not p.is_absolute():
        candidates.insert(0, relative_to / p)
    for c in candidates:
        if c.is_file():
            return c
    shipped = shipped_recipes()
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if stem in shipped and (len(p.parts) == 1 or not p.exists()):
        return shipped[stem]
    hint = did_you_mean(stem, list(shipped), n=3)
    raise RecipeError(str(ref), "", f"no such recipe file{hint} (shipped recipes: {', '.join(sorted(shipped))})")


# YAML limits. A recipe is a few KB; aliases ("billion laughs": nine aliases of nine aliases...)
# cost nothing to parse but expand to billions of nodes in every later copy, dump or validation, so
# the expanded size is measured (each alias counted at every use) before anything walks the data.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 50


def _measure(obj: Any, file: str, path: str, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(expanded node count, height) of parsed YAML; shared nodes are measured once (memo)."""
    if not isinstance(obj, (dict, list)):
        return 1, 1
    key = id(obj)
    if key in memo:
        return memo[key]
    if key in active:
        raise RecipeError(file, path, "not a valid recipe: a YAML alias refers to itself (recursive structure)")
    active.add(key)
    size, height = 1, 0
    for child in (list(obj.keys()) + list(obj.values())) if isinstance(obj, dict) else obj:
        n, h = _measure(child, file, path, memo, active)
        size += n
        height = max(height, h)
        if size > MAX_YAML_NODES:
            raise RecipeError(file, path, f"too large: more than {MAX_YAML_NODES} values once YAML aliases are expanded")
        if height + 1 > MAX_YAML_DEPTH:
            raise RecipeError(file, path, f"nested deeper than {MAX_YAML_DEPTH} levels")
    active.discard(key)
    memo[key] = (size, height + 1)
    return memo[key]


def parse_yaml(text: str, file: str, path: str = "") -> Any:
    """``yaml.safe_load`` with limits on size, alias expansion and depth; errors as RecipeError."""
    if len(text) > MAX_YAML_BYTES:
        raise RecipeError(file, path, f"too large: {len(text)} characters (at most {MAX_YAML_BYTES})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(file, path, "not valid YAML: " + " ".join(str(e).split())) from None
    except RecursionError:
        raise RecipeError(file, path, f"nested deeper than {MAX_YAML_DEPTH} levels") from None
    except (ValueError, OverflowError) as e:  # e.g. a timestamp out of range
        raise RecipeError(file, path, f"not valid YAML: {e}") from None
    _measure(data, file, path, {}, set())
    return data


def read_yaml_file(path: Path, what: str = "recipe") -> Any:
    """Read and parse a YAML file with :func:`parse_yaml`'s limits (UTF-8, size checked first)."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise RecipeError(str(path), "", f"too large for a {what}: {size} bytes (at most {MAX_YAML_BYTES})")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(str(path), "", f"not UTF-8 text (byte {e.start}); save the {what} as UTF-8") from None
    except OSError as e:
        raise RecipeError(str(path), "", f"cannot read the {what}: {e.strerror or e}") from None
    return parse_yaml(text, str(path))


def _read_mapping(path: Path) -> dict:
    data = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), "", f"expected a mapping at the top level, found {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# The merge rule (extends and overrides)
# ---------------------------------------------------------------------------------------------
def deep_merge(base: dict, over: dict, rule: MergeRule | None = None, path: str = "") -> dict:
    """Merge ``over`` onto ``base``: dicts key by key, everything else replaced; a dict whose
    identity (:class:`MergeRule`) differs from the base's at the same path switches: of the base,
    only what the rule keeps (nothing, for a component) is merged under it."""
    out = copy.deepcopy(base)
    if rule is not None:
        new, old = rule.identity(path, over), rule.identity(path, base)
        if new is not None and old is not None and new != old:
            out = copy.deepcopy(rule.kept(path, base))
    for k, v in over.items():
        sub = f"{path}.{k}" if path else str(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, rule, sub)
        else:
            out[k] = copy.deepcopy(v)
    return out


class MergeRule:
    """What a block *is*, for :func:`deep_merge`: components sit at ``roots`` (key path patterns,
    ``*`` for a list index, mapped to their registry), and a dict with a ``name`` inside a component
    is a component of registry ``nested`` (ensemble members, a prefilter critic). A component is
    identified by its canonical name -- the ``arch`` of ``arch.tag``: a tag switches presets, not
    the class, so the parent's arguments stay. ``sources``: path -> keys of which exactly one is
    given (the prompt source); the key given (and a suite's name) identifies it, and a switch
    drops only the old source's key (the other keys -- split, limit -- are not the source's)."""

    def __init__(self, roots: dict[str, Any], nested: Any = None, sources: dict[str, tuple[str, ...]] | None = None):
        self.roots, self.nested, self.sources = roots, nested, sources or {}

    @staticmethod
    def _pattern(path: str) -> str:
        return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", path)

    @staticmethod
    def _canonical(registry: Any, name: Any) -> Hashable:
        if not isinstance(name, str):
            return repr(name)
        if ":" in name:  # an import path is its own identity
            return name
        base = name.split(".")[0]
        try:
            return registry.resolve_name(base) if registry is not None else base
        except Exception:  # an unknown name: the validator reports it later with its did-you-mean
            return base

    def identity(self, path: str, node: Any) -> Optional[Hashable]:
        """The node's identity, or None when it does not say (it then merges into the base)."""
        if not isinstance(node, dict):
            return None
        pattern = self._pattern(path)
        if pattern in self.sources:
            given = [k for k in self.sources[pattern] if node.get(k) is not None]
            if len(given) != 1:
                return None
            return (given[0], node[given[0]] if isinstance(node[given[0]], str) and given[0] == self.sources[pattern][0] else None)
        if "name" not in node:
            # a teacher given as {critics: [...], combine: ...} is an ensemble, not the named critic it may replace
            return "<ensemble>" if pattern in self.roots and "critics" in node else None
        if pattern in self.roots:
            return self._canonical(self.roots[pattern], node["name"])
        if any(pattern.startswith(r + ".") for r in self.roots):
            return self._canonical(self.nested, node["name"])
        return None

    def kept(self, path: str, base: dict) -> dict:
        """What survives of ``base`` when the block at ``path`` switches to another thing."""
        pattern = self._pattern(path)
        if pattern in self.sources:
            return {k: v for k, v in base.items() if k not in self.sources[pattern]}
        return {}


def load_raw(path: Path, rule: MergeRule | None = None, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a recipe file and resolve its ``extends:`` chain (merged with :func:`deep_merge`)."""
    path = path.resolve()
    if path in _seen:
        raise RecipeError(str(path), "extends", "circular extends: " + " -> ".join(str(p) for p in _seen + (path,)))
    data = _read_mapping(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(str(path), "extends", f"expected a recipe path or name, found {parent!r}")
    try:
        parent_path = resolve_recipe_path(parent, relative_to=path.parent)
    except RecipeError as e:
        raise RecipeError(str(path), "extends", e.problem) from None
    return deep_merge(load_raw(parent_path, rule, _seen + (path,)), data, rule)


_OVERRIDE = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[\w\-]+)*)=(.*)$", re.S)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, or the plain string when not YAML)."""
    m = _OVERRIDE.match(item)
    if not m:
        raise RecipeError("command line", item, "expected an override of the form key.path=value")
    keys, raw = m.group(1).split("."), m.group(2)
    try:
        value = parse_yaml(raw, "command line", m.group(1)) if raw != "" else ""
    except RecipeError as e:
        if "not valid YAML" not in e.problem:
            raise
        value = raw  # not YAML: taken as the plain string it is
    return keys, value


def _set(node: Any, keys: list[str], value: Any, rule: MergeRule | None, path: str, full: str) -> Any:
    """``node`` with ``value`` merged in at ``keys`` (by :func:`deep_merge`'s rule); returns the new node."""
    key, here = keys[0], f"{path}.{keys[0]}" if path else keys[0]
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            where = full if len(keys) == 1 else here
            raise RecipeError("command line", where, f"list index {key!r} out of range (0..{len(node) - 1})")
        i = int(key)
        node[i] = value if len(keys) == 1 else _set(node[i], keys[1:], value, rule, here, full)
        return node
    if not isinstance(node, dict):
        raise RecipeError("command line", path, f"cannot set a key inside a {type(node).__name__}")
    if len(keys) == 1:  # the same rule as a child recipe giving {key: value} at this path
        return deep_merge(node, {key: value}, rule, path)
    child = node.get(key)
    if child is None:
        child = {}
    if not isinstance(child, (dict, list)):
        raise RecipeError("command line", here, f"cannot set a key inside a {type(child).__name__}")
    node[key] = _set(child, keys[1:], value, rule, here, full)
    return node


def apply_overrides(data: dict, overrides: list[str], file: str | None = None, rule: MergeRule | None = None) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: ``10`` is an int), each merged by
    the rule a child recipe follows, so ``search.name=best_of_n`` switches the component."""
    data = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        data = _set(data, keys, value, rule, "", ".".join(keys))
    return data


def load_data(ref: str | Path | dict, overrides: list[str] | tuple[str, ...] | dict | None = (),
              rule: MergeRule | None = None,
              before_overrides: Callable[[dict, Path], None] | None = None) -> tuple[dict, Optional[str]]:
    """The raw data of a config (file path, shipped name or dict): ``extends`` resolved, overrides
    applied (dotted strings, or a nested dict merged by the same rule). Returns (data, file).

    ``before_overrides(data, file_path)`` may rewrite what the file says (relative paths) before
    the command line's values, which stay relative to the working directory, are applied."""
    if isinstance(ref, dict):
        file, data = None, copy.deepcopy(ref)
        parent = data.pop("extends", None)
        if parent:
            if not isinstance(parent, str):
                raise RecipeError(None, "extends", f"expected a recipe path or name, found {parent!r}")
            data = deep_merge(load_raw(resolve_recipe_path(parent), rule), data, rule)
    else:
        path = resolve_recipe_path(ref)
        file, data = str(path), load_raw(path, rule)
        if before_overrides is not None:
            before_overrides(data, path.resolve().parent)
    if isinstance(overrides, dict):
        data = deep_merge(data, overrides, rule)
    elif overrides:
        data = apply_overrides(data, list(overrides), file, rule)
    return data, file


# ---------------------------------------------------------------------------------------------
# Errors from a pydantic schema
# ---------------------------------------------------------------------------------------------
_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def describe(err: dict, allowed_keys: dict[str, list[str]] | None = None) -> tuple[str, str]:
    """(key path, problem) of one pydantic error, with the allowed keys and a did-you-mean."""
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    typ = err["type"]
    found = err.get("input")
    if typ == "missing":
        return loc, "missing required key"
    if typ == "extra_forbidden":
        parent, _, key = loc.rpartition(".")
        allowed = (allowed_keys or {}).get(parent, [])
        hint = did_you_mean(key, allowed)
        return loc, f"unknown key{hint} (allowed: {', '.join(allowed)})" if allowed else f"unknown key{hint}"
    if typ in _EXPECTED:
        return loc, f"expected {_EXPECTED[typ]}, found {found!r}"
    if typ == "literal_error":
        expected = str(err["ctx"].get("expected"))
        choices = re.findall(r"'([^']*)'", expected)
        return loc, f"found {found!r}{did_you_mean(str(found), choices)}; allowed: {expected}"
    if typ == "finite_number":
        return loc, f"found {found!r}; expected a finite number (not NaN or infinity)"
    if typ in _BOUNDS:
        limit = next(iter((err.get("ctx") or {}).values()), "?")
        key = loc.rpartition(".")[2]
        return loc, f"found {found!r}; {key} must be {_BOUNDS[typ]} {limit} (a value {err['msg'].split('should be ')[-1]})"
    if typ == "too_short":
        return loc, f"found {found!r}; {err['msg']}"
    if typ == "value_error":
        return loc, err["msg"].removeprefix("Value error, ")
    return loc, f"{err['msg']} (found {found!r})"


def allowed_keys(schema: Any, prefix: str = "", out: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Key path -> the keys a pydantic schema allows there, for every nested section."""
    import typing

    from pydantic import BaseModel

    out = {} if out is None else out
    out[prefix] = [k for k, f in schema.model_fields.items() if not f.exclude]
    for k, f in schema.model_fields.items():
        kinds = [f.annotation, *typing.get_args(f.annotation)]
        for t in kinds:
            if isinstance(t, type) and issubclass(t, BaseModel):
                allowed_keys(t, f"{prefix}.{k}" if prefix else k, out)
    return out


def schema_errors(errors: list[dict], file: Optional[str], schema: Any, group_unknown: bool = False) -> RecipeError:
    """Pydantic errors (``ValidationError.errors()``) against ``schema`` as RecipeError(s), one per
    problem; ``group_unknown`` reports all unknown keys on one line, each with its did-you-mean."""
    allowed = allowed_keys(schema)
    out: list[RecipeError] = []
    unknown: list[tuple[str, str]] = []
    for err in errors:
        loc = ".".join(str(x) for x in err["loc"])
        if group_unknown and err["type"] == "extra_forbidden":
            parent, _, key = loc.rpartition(".")
            close = difflib.get_close_matches(key, allowed.get(parent, []), n=1, cutoff=0.5)
            unknown.append((loc, f"{loc!r} (did you mean {(parent + '.' if parent else '') + close[0]!r}?)" if close else repr(loc)))
            continue
        out.append(RecipeError(file, *describe(err, allowed)))
    if unknown:
        parents = sorted({loc.rpartition(".")[0] for loc, _ in unknown})
        allowed_txt = "; ".join(f"{p or 'top level'}: {', '.join(allowed.get(p, []))}" for p in parents)
        out.insert(0, RecipeError(file, unknown[0][0], f"unknown keys {', '.join(u for _, u in unknown)} (allowed {allowed_txt})"))
    return out[0] if len(out) == 1 else RecipeErrors(out)


def validate_schema(schema: Any, data: dict, file: Optional[str], group_unknown: bool = False) -> Any:
    """``schema.model_validate(data)`` with every problem raised as a one-line RecipeError."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise schema_errors(e.errors(), file, schema, group_unknown) from None


__all__ = ["RecipeError", "RecipeErrors", "MergeRule", "deep_merge", "apply_overrides", "load_raw", "load_data",
           "parse_yaml", "read_yaml_file", "resolve_recipe_path", "shipped_recipes", "describe", "schema_errors",
           "validate_schema", "did_you_mean", "raise_all"]
