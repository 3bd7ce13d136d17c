"""Recipes: YAML files that compose a model, critics, a search strategy and prompts.

Style after LightningCLI (lightning.ai/docs/pytorch/stable/cli): a component is a name plus its
arguments, written flat::

    model: {name: minimug}
    critics:
      - {name: world_oracle, weight: 1.0}
    search: {name: reinforce, steps: 20, mode: both}
    prompts: {suite: minimug-world, split: test, limit: 12}
    run: {seed: 0, device: cpu, dtype: float32, output_dir: runs, budget: {critic_calls: 100}}

``extends: other.yaml`` merges another recipe underneath (dicts merge key by key, lists are
replaced); command-line overrides are dotted (``search.steps=10``, ``critics.0.weight=2``). Both
follow one rule (:mod:`milr.config`, LightningCLI's): a component given another ``name`` drops the
parent's arguments (``search: {name: best_of_n}`` in a child of a reinforce recipe, or
``search.name=best_of_n``), and a prompt block that switches source (``prompts: {file: p.txt}``
under a suite recipe) drops the old source. ``name.tag`` is a preset (``reinforce.faithful``).
Every component's defaults are written into ``milr show`` and ``manifest.json``.

Optional early stopping on disagreement (:class:`milr.diagnostics.Guard`)::

    guard: {critic: {name: world_oracle, mode: partial}, patience: 2, tolerance: 0.0}

A held-out guard critic (never part of the search reward, so it must not be one of ``critics``)
scores the best-so-far image after each step. A step is rejected when the search reward of the
best-so-far is above the initial image's while the guard's score is below the initial image's by
more than ``tolerance``; after ``patience`` consecutive rejected steps the search stops. The run
returns the last best-so-far the guard did not reject (the initial image at worst) and records
``guard.stopped`` and ``guard.stopped_at_step`` in the result line. Guard scores are a real cost:
each distinct best-so-far image scored counts as one critic call in the budget ledger.

Everything is validated before any weights load: the structure (pydantic), component names
(with "did you mean"), and each component's arguments against its constructor's signature.
Every error names the file, the key path, what was found and what is allowed.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator,
                      model_serializer, model_validator)

from milr.config import (  # noqa: F401  (re-exported: the names other modules import from here)
    MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, RecipeError, RecipeErrors, apply_overrides, deep_merge,
    describe, did_you_mean, load_data, load_raw, parse_yaml, raise_all, read_yaml_file, resolve_recipe_path,
    shipped_recipes, MergeRule,
)
from milr.errors import UserError
from milr.registry import CRITICS, MODELS, REGISTRIES, SEARCHES, SUITES, Registry, UnknownComponentError


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
# Upper bounds: a value past these is a typo or an attack, never a setting (2**63-1 is the largest
# seed torch.manual_seed and numpy accept; more threads than 4x the cores only thrashes, and
# 100000 threads crashed torch).
MAX_SEED = 2**63 - 1
MAX_THREADS = 4 * (os.cpu_count() or 1)
MAX_COUNT = 10**9  # prompts, tokens, critic calls
MAX_BATCH_PROMPTS = 4096  # run.batch_prompts: one thread per prompt in the batch
MAX_WORKERS = 1024  # run.workers: Ray actors, one per device


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ComponentSpec(BaseModel):
    """``{name: ..., **arguments}``; arguments are checked against the component's signature."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str
    # The signature's defaults (and an ``arch.tag`` name's presets) of the arguments not given,
    # filled in by validate_component_args: dumped (milr show, manifest.json) so a saved recipe
    # replays the same run after a default changes in code; never passed to the constructor.
    _defaults: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_serializer(mode="wrap")
    def _dump_with_defaults(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for k, v in self._defaults.items():
            data.setdefault(k, v)
        return data


class CriticSpec(ComponentSpec):
    model_config = ConfigDict(serialize_by_alias=True)
    weight: float = 1.0
    # ``as: my-label``: the critic's name in results and ensembles (several trained critics in one recipe)
    label: Optional[str] = Field(default=None, alias="as", pattern=r"^[\w][\w.\-]{0,99}$")


class PromptsSpec(_Strict):
    suite: Optional[str] = None
    file: Optional[str] = None
    inline: Optional[list[Union[str, dict]]] = None
    split: str = "test"
    tags: Optional[list[str]] = None  # checked against the suite card's categories (check_recipe_components)
    limit: Optional[int] = Field(default=None, gt=0, le=MAX_COUNT)
    per_tag: Optional[int] = Field(default=None, gt=0, le=MAX_COUNT)
    # Benchmark protocols score several images per prompt (GenEval 4, T2I-CompBench 10): each
    # (prompt, image) is its own task, id "<prompt id>#<k>", with its own seed (milr.prompts).
    images_per_prompt: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_source(self) -> "PromptsSpec":
        given = [k for k in ("suite", "file", "inline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of suite, file, inline; found {given or 'none'}"
            )
        return self


class BudgetSpec(_Strict):
    text_tokens: Optional[int] = Field(default=None, gt=0, le=MAX_COUNT)
    image_tokens: Optional[int] = Field(default=None, gt=0, le=MAX_COUNT)
    generator_tokens: Optional[int] = Field(default=None, gt=0, le=MAX_COUNT)
    critic_calls: Optional[int] = Field(default=None, gt=0, le=MAX_COUNT)
    seconds: Optional[float] = Field(default=None, gt=0)


class RunSpec(_Strict):
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    output_dir: str = "runs"
    name: Optional[str] = None
    budget: BudgetSpec = BudgetSpec()
    save_steps: bool = False
    cache_dir: Optional[str] = None  # on-disk score cache; None keeps it in memory
    threads: Optional[int] = Field(default=None, gt=0, le=MAX_THREADS)  # torch CPU threads; small models run best on 1
    # A critic returning NaN/inf: stop with an error naming it, or drop that candidate and count it.
    on_nonfinite: Literal["error", "skip"] = "error"
    # Prompts searched together: their model and critic calls are merged into one batch each (records do not
    # depend on it; see milr/runner.py).
    batch_prompts: int = Field(default=1, ge=1, le=MAX_BATCH_PROMPTS)
    # Where prompts run (milr/executors): this process, or `workers` Ray actors, each holding the model and critics
    # on its own share of a node (gpus_per_worker 1: one GPU each; fractions share a GPU).
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    gpus_per_worker: float = Field(default=0.0, ge=0, le=64)
    cpus_per_worker: float = Field(default=1.0, gt=0, le=1024)

    @model_validator(mode="after")
    def _placement(self) -> "RunSpec":
        if self.executor == "local" and (self.workers > 1 or self.gpus_per_worker > 0):
            raise ValueError("workers and gpus_per_worker need executor: ray (the local executor is one process)")
        if self.executor == "ray" and self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r} with executor: ray; give device: cuda (each worker sees only "
                             "the GPUs Ray gave it) and gpus_per_worker")
        if self.executor == "ray" and self.device == "cuda" and self.gpus_per_worker == 0:
            raise ValueError("device: cuda with executor: ray needs gpus_per_worker > 0 (Ray hides GPUs from a "
                             "worker that asked for none)")
        return self

    @field_validator("output_dir", "cache_dir")
    @classmethod
    def _path(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v.strip() or "\x00" in v):
            raise ValueError(f"found {v!r}; expected a folder path (not empty, no NUL character)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: Optional[str]) -> Optional[str]:
        # The name becomes a folder under output_dir: no separators, so it cannot escape it.
        if v is not None and not re.fullmatch(r"[\w][\w.\-]{0,99}", v):
            raise ValueError(f"found {v!r}; allowed: letters, digits, '_', '-', '.' (at most 100, not starting with '.' or '-')")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from milr.devices import check_device

        return check_device(v)


class GuardSpec(_Strict):
    """Early stopping on disagreement with a held-out critic (see the module docstring)."""

    critic: ComponentSpec
    patience: int = Field(default=2, ge=1, le=MAX_COUNT)
    tolerance: float = Field(default=0.0, ge=0)


class Recipe(_Strict):
    description: Optional[str] = None
    model: ComponentSpec
    critics: list[CriticSpec] = Field(min_length=1)
    combine: Optional[dict[str, Any]] = None  # arguments of the ensemble when several critics
    evaluate: list[CriticSpec] = []  # held-out critics: score initial and final images only
    guard: Optional[GuardSpec] = None  # held-out critic that stops the search on disagreement
    search: ComponentSpec
    prompts: PromptsSpec
    run: RunSpec = RunSpec()

    # Set by load_recipe, not part of the YAML.
    source: Optional[str] = Field(default=None, exclude=True)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data: unset optional keys left out, components' arguments all kept
        (a ``None`` default included, so a manifest replays the arguments the run used)."""
        return _drop_unset(self, self.model_dump(mode="json", exclude={"source"}))


def _drop_unset(model: BaseModel, data: dict) -> dict:
    """``data`` (``model``'s dump) without the declared fields that are None; extras untouched."""
    for name, field in type(model).model_fields.items():
        key = field.alias if field.alias and field.alias in data else name
        if key not in data:
            continue
        value = getattr(model, name)
        if value is None:
            del data[key]
        elif isinstance(value, BaseModel):
            _drop_unset(value, data[key])
        elif isinstance(value, list):
            for v, d in zip(value, data[key]):
                if isinstance(v, BaseModel):
                    _drop_unset(v, d)
    return data


# ---------------------------------------------------------------------------------------------
# Loading: files, extends, overrides
# ---------------------------------------------------------------------------------------------
def recipe_rule() -> MergeRule:
    """What a recipe block *is*, for the merge rule of ``extends`` and overrides
    (:func:`milr.config.deep_merge`): components by name, the prompt source by kind and suite."""
    return MergeRule(
        {"model": MODELS, "search": SEARCHES, "critics.*": CRITICS, "evaluate.*": CRITICS, "guard.critic": CRITICS},
        nested=CRITICS, sources={"prompts": ("suite", "file", "inline")})


def load_recipe(ref: str | Path | dict, overrides: list[str] | tuple[str, ...] = (), check_components: bool = True) -> Recipe:
    """Load, merge, override and validate a recipe. Raises :class:`RecipeError` on any problem."""
    data, file = load_data(ref, overrides, recipe_rule())
    recipe = validate(data, file)
    recipe.source = file
    if check_components:
        check_recipe_components(recipe)
    return recipe


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def validate(data: dict, file: str | None = None) -> Recipe:
    """The recipe's structure (pydantic), every problem one line naming its key path."""
    from milr.config import validate_schema

    return validate_schema(Recipe, data, file)


# Constructor parameters the runner provides itself, never given in a recipe (device and dtype
# default to the run's and may be set per component).
_INJECTED = {"model", "self"}


def component_signature(obj: Any) -> tuple[dict[str, tuple[Any, Any]], bool]:
    """(fields for pydantic, accepts **kwargs) from a class's ``__init__`` or a factory."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)  # Annotated ranges (milr.argtypes) kept
    except Exception:  # unresolvable annotations: validate names only
        hints = {}
    fields: dict[str, tuple[Any, Any]] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL or p.name in _INJECTED or p.name.startswith("_"):
            continue  # the run's own objects, and private keywords a recipe never sets
        ann = hints.get(p.name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (ann, default)
    return fields, var_kw


def _non_finite(node: Any, prefix: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN or infinite float inside ``node``, else None."""
    if isinstance(node, float) and not math.isfinite(node):
        return prefix.rstrip("."), node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        found = _non_finite(v, f"{prefix}{k}.")
        if found:
            return found
    return None


def validate_component_args(registry: Registry, spec: ComponentSpec, path: str, file: str | None, reserved: tuple[str, ...] = ()) -> list[RecipeError]:
    """Check a component's name and arguments; returns the problems found."""
    try:
        cls = registry.get(spec.name)
    except UnknownComponentError as e:
        return [RecipeError(file, f"{path}.name", e.message.replace(f"unknown {registry.kind} ", f"unknown {registry.kind} name "))]
    except ImportError as e:
        return [RecipeError(file, f"{path}.name", f"{registry.kind} {spec.name!r} cannot be imported: {e}")]
    except UserError as e:  # an import path not allowed here, or not a subclass of the interface
        return [RecipeError(file, f"{path}.name", str(e))]
    try:
        fields, var_kw = component_signature(cls)
    except (TypeError, ValueError) as e:  # no inspectable signature (a builtin, say)
        return [RecipeError(file, f"{path}.name", f"{registry.kind} {spec.name!r} has no usable signature: {e}")]
    args = {**registry.tag_args(spec.name), **{k: v for k, v in spec.args.items() if k not in reserved}}
    bad = _non_finite(args)
    if bad:  # also where the signature says Any: a NaN or infinity is never a setting
        return [RecipeError(file, f"{path}.{bad[0]}", f"found {bad[1]!r}; expected a finite number (not NaN or infinity)")]
    # Non-finite numbers are never a setting (a NaN weight made every reward NaN).
    config = ConfigDict(extra="allow" if var_kw else "forbid", arbitrary_types_allowed=True, allow_inf_nan=False)
    try:
        Model = create_model(f"{type(cls).__name__}Args", __config__=config, **fields)  # type: ignore[call-overload]
    except Exception as e:  # an annotation pydantic cannot build a schema for: check names only
        Model = create_model(f"{type(cls).__name__}Args", __config__=config,
                             **{k: (Any, d) for k, (_, d) in fields.items()})  # type: ignore[call-overload]
    try:
        validated = Model.model_validate(args)
    except ValidationError as e:
        out = []
        for err in e.errors():
            loc, problem = describe(err, {"": list(fields)})
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(loc, list(fields))
                problem = f"unknown argument of {registry.kind} {spec.name!r}{hint} (allowed: {', '.join(fields) or 'none'})"
            out.append(RecipeError(file, f"{path}.{loc}", problem))
        return out
    # Pass on the values as validated ("1e-3" read by YAML as a string becomes the float 0.001),
    # so the component receives exactly what was checked; and write down every default, so the
    # manifest replays the same run after a default changes in code.
    extra = spec.__pydantic_extra__ if spec.__pydantic_extra__ is not None else {}
    full = {k: getattr(validated, k) if k in args else _plain(d) for k, (_, d) in fields.items()
            if k in args or (d is not ... and k not in _RUN_OWNED and _plain(d) is not _NOT_PLAIN)}
    full.update({k: v for k, v in args.items() if k not in fields})  # **kwargs extras
    try:
        Model.model_validate(full)
    except ValidationError as e:  # a default its own annotation refuses (None for an int) stays implicit
        for err in e.errors():
            if err["loc"] and err["loc"][0] not in args:
                full.pop(err["loc"][0], None)
    for k in extra:
        if k in full:
            extra[k] = full[k]
    spec._defaults = {k: v for k, v in full.items() if k not in extra}  # written by to_dict, not passed
    # Specs nested in the arguments (an ensemble's members): checked the same way, now.
    errors: list[RecipeError] = []
    for arg, kind in (getattr(cls, "component_args", None) or {}).items():
        value = full.get(arg)
        for i, member in (enumerate(value) if isinstance(value, list) else ()):
            if isinstance(member, dict):
                errors += check_spec(REGISTRIES[kind], member, f"{path}.{arg}.{i}", file, reserved=("id", "normalize"))
    return errors


def check_spec(registry: Registry, data: Any, path: str, file: str | None, reserved: tuple[str, ...] = ()) -> list[RecipeError]:
    """A nested component spec (``{name: ..., **arguments}``: an ensemble member, a distillation
    teacher) checked against its signature as a recipe's components are; returns the problems."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return [RecipeError(file, path, f"expected a component {{name: ..., arguments}}, found {data!r}")]
    try:
        spec = CriticSpec.model_validate(data)
    except ValidationError as e:
        return [RecipeError(file, f"{path}.{loc}" if loc else path, problem)
                for loc, problem in (describe(err) for err in e.errors())]
    return validate_component_args(registry, spec, path, file, reserved)


# Defaults never written into a recipe: the run supplies them (milr.factory injects device and dtype).
_RUN_OWNED = {"device", "dtype"}
_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    """``value`` as plain YAML/JSON data (tuples as lists), or ``_NOT_PLAIN`` for anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_PLAIN
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items.values()) else items
    return _NOT_PLAIN


def check_recipe_components(recipe: Recipe) -> None:
    """Validate every component name and argument; raise all problems together."""
    file = recipe.source
    errors: list[RecipeError] = []
    errors += validate_component_args(MODELS, recipe.model, "model", file)
    for i, c in enumerate(recipe.critics):
        errors += validate_component_args(CRITICS, c, f"critics.{i}", file)
    for i, c in enumerate(recipe.evaluate):
        errors += validate_component_args(CRITICS, c, f"evaluate.{i}", file)
    if recipe.guard is not None:
        g = recipe.guard.critic
        errors += validate_component_args(CRITICS, g, "guard.critic", file)
        for i, c in enumerate(recipe.critics):
            if c.name == g.name and c.args == g.args:
                errors.append(RecipeError(file, "guard.critic", f"the guard must be held out, but it is search critic "
                                          f"critics.{i} ({c.name}); pick a critic the search does not see"))
    errors += validate_component_args(SEARCHES, recipe.search, "search", file)
    if recipe.combine is not None:  # the ensemble's options (milr.critics.ensemble_config), named as the runner names members
        from milr.critics.ensemble_config import validate_combine

        names: list[str] = []
        for i, c in enumerate(recipe.critics):
            names.append(c.name if c.name not in names else f"{c.name}#{i}")
        bad = _non_finite(recipe.combine)
        if bad:
            errors.append(RecipeError(file, f"combine.{bad[0]}", f"found {bad[1]!r}; expected a finite number (not NaN or infinity)"))
        try:
            errors += [RecipeError(file, path, problem) for path, problem in validate_combine(
                recipe.combine, names, Path(file).parent if file else None, [c.weight for c in recipe.critics])]
        except OSError as e:  # a path too long or unreadable, met while looking for a reference file
            errors.append(RecipeError(file, "combine", f"cannot use a path: {e.strerror or e}"))
    p = recipe.prompts
    if p.suite is not None and p.suite not in SUITES:
        try:
            SUITES.resolve_name(p.suite)
        except UnknownComponentError as e:
            errors.append(RecipeError(file, "prompts.suite", e.message))
    elif p.suite is not None and p.tags:
        categories = getattr(SUITES.card(p.suite), "categories", ()) or ()
        for i, tag in enumerate(p.tags):
            if categories and tag not in categories:
                errors.append(RecipeError(file, f"prompts.tags.{i}", f"found {tag!r}; allowed: {', '.join(repr(c) for c in categories)} (suite {p.suite!r})"))
    if p.file is not None:
        from milr.prompts import resolve_prompt_file

        found = resolve_prompt_file(p.file, file)
        if found is None:
            errors.append(RecipeError(file, "prompts.file", f"file not found: {p.file!r}"))
        else:  # absolute from here on (manifest, resume), whatever folder the run is resumed from
            p.file = str(found)
    if p.inline is not None and all(isinstance(x, str) for x in p.inline):
        for i, c in enumerate(recipe.critics):
            card = CRITICS.card(c.name) if c.name in CRITICS else None
            if card is not None and getattr(card, "needs_metadata", ()):
                errors.append(RecipeError(
                    file, f"critics.{i}.name",
                    f"critic {c.name!r} needs prompt metadata {list(card.needs_metadata)}, but prompts.inline gives plain strings; "
                    "give inline items as {prompt: ..., metadata: {...}} or use a suite"))
    raise_all(errors)


def _message(e: BaseException) -> str:
    """An exception's text (KeyError's without the quotes its str() adds)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e) or type(e).__name__


def preflight(recipe: Recipe) -> list:
    """Check everything a run needs before the first heavy load; returns the tasks.

    The recipe itself is already valid (:func:`load_recipe`). Here: the prompts load (file, suite,
    split, unique ids); the search's constructor accepts its arguments (searches are cheap to
    build); and every component that declares a ``preflight(args)`` class method finds its weights
    (resolved, not loaded). All problems are raised together as a :class:`RecipeError`.
    """
    from milr.prompts import load_tasks

    file = recipe.source
    errors: list[RecipeError] = []
    tasks: list = []
    try:
        tasks = load_tasks(recipe.prompts, file)
    except RecipeError as e:
        errors.extend(getattr(e, "errors", [e]))
    search = recipe.search
    try:
        SEARCHES.get(search.name)(**search.args)
    except (ValueError, TypeError) as e:
        errors.append(RecipeError(file, "search", f"{search.name}: {e}"))
    prefilter = search.args.get("prefilter_critic")
    if isinstance(prefilter, str):  # built with no arguments: its signature must allow that
        for e in check_spec(CRITICS, {"name": prefilter}, "search.prefilter_critic", file):
            missing = e.problem == "missing required key"
            errors.append(RecipeError(file, "search.prefilter_critic", f"critic {prefilter!r} needs the argument "
                                      f"{e.path.rpartition('.')[2]!r}; a prefilter critic is built with none" if missing else e.problem))
    parts = [("model", MODELS, recipe.model)]
    parts += [(f"critics.{i}", CRITICS, c) for i, c in enumerate(recipe.critics)]
    parts += [(f"evaluate.{i}", CRITICS, c) for i, c in enumerate(recipe.evaluate)]
    for path, registry, spec in parts:
        hook = getattr(registry.get(spec.name), "preflight", None)
        if not callable(hook):
            continue
        try:
            hook(dict(spec.args))
        except (ValueError, OSError, ImportError, KeyError) as e:
            errors.append(RecipeError(file, path, f"{registry.kind} {spec.name!r}: {_message(e)}"))
    if recipe.run.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            errors.append(RecipeError(file, "run.executor", "ray is not installed; pip install 'milr[ray]' "
                                      "(or run without it: executor: local, or milr run --shard K/N)"))
    raise_all(errors)
    return tasks


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
