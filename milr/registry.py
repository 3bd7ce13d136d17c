"""Component registries for critics, search strategies, models and prompt suites.

Design follows pyiqa's registry (github.com/chaofengc/IQA-PyTorch, ``pyiqa/utils/registry.py``):
one ``Registry`` class, a decorator to register, lazy import of a component's module, third-party
plugins through ``importlib.metadata`` entry points, and a "did you mean" error for unknown names.

How a built-in component is declared (two lines, no heavy import at declaration time)::

    # critics/__init__.py -- the index: name -> "module:Attr" plus its card
    CRITICS.register_lazy("clip_score", "milr.critics.clip_score:CLIPScore", card=CriticCard(...))

    # critics/clip_score.py -- the implementation
    @CRITICS.register("clip_score")
    class CLIPScore(Critic): ...

``milr list`` reads cards from the index without importing the component (so it stays fast and a
missing optional dependency only breaks its own component). ``REGISTRY.get(name)`` imports the
module on first use.

Third-party packages declare components by entry point only (``pyproject.toml``)::

    [project.entry-points."milr.critics"]
    my_critic = "my_pkg.my_critic:MyCritic"

The class may carry its card as a ``card`` class attribute. Names may also be a dotted import path
``"package.module:Attr"`` in a recipe, which is handy for one-off experiments.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Iterable

from milr.errors import UserError

# Import paths in recipes ("pkg.module:Class") are code the recipe makes us import. Commands that
# only inspect a recipe (show, --dry-run) turn this off unless the user passes --allow-imports;
# running a recipe is trusting it, as with LightningCLI's ``class_path``.
_IMPORT_PATHS_ALLOWED = True


def allow_import_paths(allowed: bool) -> bool:
    """Allow or forbid importing components named by import path; returns the previous setting."""
    global _IMPORT_PATHS_ALLOWED
    previous, _IMPORT_PATHS_ALLOWED = _IMPORT_PATHS_ALLOWED, bool(allowed)
    return previous


class ComponentTrustError(UserError):
    """An import path that may not be imported now, or that names the wrong kind of object."""

    kind = "component"


class UnknownComponentError(KeyError):
    """Raised when a name is not registered. Carries the close matches for error messages."""

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]):
        self.kind = kind
        self.name = name
        self.suggestions = suggestions
        self.known = known
        super().__init__(self.message)

    @property
    def message(self) -> str:
        msg = f"unknown {self.kind} {self.name!r}"
        if self.suggestions:
            msg += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        msg += f" (registered: {', '.join(self.known)})"
        return msg

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return self.message


class UnknownTagError(UnknownComponentError):
    """``arch.tag`` with a tag the component does not declare."""

    @property
    def message(self) -> str:
        base, _, tag = self.name.partition(".")
        msg = f"unknown tag {tag!r} of {self.kind} {base!r}"
        if self.suggestions:
            msg += f"; did you mean {' or '.join(repr(f'{base}.{s}') for s in self.suggestions)}?"
        return msg + (f" (tags: {', '.join(self.known)})" if self.known else f" ({self.kind} {base!r} has no tags)")


@dataclass
class _Entry:
    name: str
    target: str | None = None  # "module:Attr" for lazy entries
    obj: Any = None  # the class or factory, once imported
    card: Any = None
    source: str = "builtin"  # "builtin" | "entry-point" | "import-path"
    tags: dict[str, dict[str, Any]] | None = None  # timm's "arch.tag": tag -> argument defaults


class Registry:
    """A name -> component mapping with lazy import and entry-point plugins."""

    def __init__(self, kind: str, entry_point_group: str, index_module: str | None = None, interface: str | None = None):
        self.kind = kind
        self.interface = interface  # "module:Class" an import-path component must subclass
        self.entry_point_group = entry_point_group
        self.index_module = index_module  # declares the built-ins; imported on first lookup
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = False

    # -- declaration -------------------------------------------------------------------------
    def register_lazy(self, name: str, target: str, card: Any = None, aliases: Iterable[str] = (),
                      tags: dict[str, dict[str, Any]] | None = None) -> None:
        """Declare ``name`` implemented at ``"module:Attr"``; the module is imported on first use.

        ``tags``: presets in timm's ``arch.tag`` form, each the argument defaults ``name.tag``
        stands for (``reinforce.faithful`` = ``reinforce`` with ``preset: faithful``); arguments a
        recipe gives win over them."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = _Entry(name=name, target=target, card=card, tags=dict(tags or {}))
        for alias in aliases:
            self._aliases[alias] = name

    def register(self, name: str | None = None, *, card: Any = None, override: bool = False) -> Callable[[Any], Any]:
        """Decorator registering a class or factory under ``name`` (default: its ``__name__``)."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            entry = self._entries.get(key)
            if entry is not None and entry.obj is not None and entry.obj is not obj and not override:
                raise ValueError(f"{self.kind} {key!r} is already registered to {entry.obj!r}")
            if entry is None:
                entry = _Entry(name=key, card=card)
                self._entries[key] = entry
            entry.obj = obj
            entry.card = card or entry.card or getattr(obj, "card", None)
            # The class learns its registered name and card so instances can report them.
            try:
                obj.registry_name = key
                # Its own card, not one inherited from a registered parent class (geneval is a
                # detector subclass, t2i_clipscore a clip_score one: they reported the parent's card).
                if entry.card is not None and vars(obj).get("card") is None:
                    obj.card = entry.card
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    # -- plugins -----------------------------------------------------------------------------
    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if self.index_module:
            importlib.import_module(self.index_module)
        for ep in importlib_metadata.entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self._entries[ep.name] = _Entry(name=ep.name, target=ep.value, source="entry-point")

    # -- lookup ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        if not isinstance(name, str):  # None (no name found), a number from YAML: never registered
            return False
        return name in self._entries or name in self._aliases or _is_import_path(name)

    def resolve_name(self, name: str) -> str:
        """Canonical name for ``name`` (aliases resolved); raises UnknownComponentError."""
        self._load_plugins()
        if name in self._entries or _is_import_path(name):
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = self.names()
        base, dot, tag = name.partition(".")
        base = self._aliases.get(base, base)
        if dot and base in self._entries:  # timm-style "arch.tag": a declared preset of arch
            tags = self.tags(base)
            if tag not in tags:
                raise UnknownTagError(self.kind, f"{base}.{tag}", difflib.get_close_matches(tag, list(tags), n=2, cutoff=0.5),
                                      sorted(tags))
            return base
        suggestions = difflib.get_close_matches(name, known + list(self._aliases), n=3, cutoff=0.5)
        raise UnknownComponentError(self.kind, name, suggestions, known)

    def tags(self, name: str) -> dict[str, dict[str, Any]]:
        """The presets ``name`` declares (tag -> argument defaults); a plugin's come from its
        class attribute ``tags`` when its entry has none."""
        self._load_plugins()
        key = self._aliases.get(name, name)
        entry = self._entries.get(key)
        if entry is None:
            return {}
        if entry.tags is None or (not entry.tags and entry.source == "entry-point"):
            declared = getattr(self.get(key), "tags", None)
            entry.tags = {k: dict(v) for k, v in declared.items()} if isinstance(declared, dict) else {}
        return entry.tags

    def tag_args(self, name: str) -> dict[str, Any]:
        """The argument defaults of ``name``'s tag (``{}`` without a tag); raises UnknownTagError."""
        if _is_import_path(name) or "." not in name or name in self._entries:
            return {}
        base = self.resolve_name(name)
        return dict(self.tags(base).get(name.partition(".")[2], {}))

    def get(self, name: str) -> Any:
        """The component class or factory registered under ``name``; imports it if needed."""
        key = self.resolve_name(name)
        entry = self._entries.get(key) or _Entry(name=key, target=key, source="import-path")
        if entry.obj is None and entry.source == "import-path":
            if not _IMPORT_PATHS_ALLOWED:
                raise ComponentTrustError(
                    f"{self.kind} {key!r} is an import path; this command imports nothing a recipe names "
                    "(recipes are code) -- pass --allow-imports if you trust the recipe")
            obj = _import_target(key)
            self._check_interface(key, obj)
            self._entries[key] = entry
            entry.obj = obj
            if getattr(obj, "registry_name", None) is None:
                obj.registry_name = key
        if entry.obj is None:
            entry.obj = _import_target(entry.target)
            try:
                if getattr(entry.obj, "registry_name", None) is None:
                    entry.obj.registry_name = key
            except (AttributeError, TypeError):
                pass
        if entry.card is None:
            entry.card = getattr(entry.obj, "card", None)
        return entry.obj

    def _check_interface(self, key: str, obj: Any) -> None:
        """An import path must name a subclass of this registry's interface (never, say, ``os:system``)."""
        if self.interface is None:
            if not callable(obj):
                raise ComponentTrustError(f"{self.kind} {key!r} is not callable")
            return
        base = _import_target(self.interface)
        if isinstance(obj, type) and issubclass(obj, base) and inspect.isabstract(obj):
            raise ComponentTrustError(f"{self.kind} {key!r} is abstract (it leaves methods unimplemented)")
        if not (isinstance(obj, type) and issubclass(obj, base)):
            what = f"class {obj.__name__}" if isinstance(obj, type) else type(obj).__name__
            raise ComponentTrustError(
                f"{self.kind} {key!r} is a {what}, not a subclass of {self.interface.replace(':', '.')}; "
                f"an import path must name a {base.__name__} class")

    def card(self, name: str) -> Any:
        """The component's card, without importing it when the index declares one."""
        key = self.resolve_name(name)
        entry = self._entries.get(key)
        if entry is not None and entry.card is not None:
            return entry.card
        return getattr(self.get(key), "card", None)

    def build(self, name: str, **kwargs: Any) -> Any:
        """The component built with its tag's defaults (if any) under ``kwargs``."""
        return self.get(name)(**{**self.tag_args(name), **kwargs})


def _is_import_path(name: str) -> bool:
    return ":" in name and all(part for part in name.split(":", 1))


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise
    except (TypeError, ValueError) as e:  # relative or malformed module names
        raise ImportError(f"bad module name {module_name!r}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


CRITICS = Registry("critic", "milr.critics", "milr.critics", "milr.interfaces:Critic")
SEARCHES = Registry("search", "milr.search", "milr.search", "milr.interfaces:Search")
MODELS = Registry("model", "milr.models", "milr.models", "milr.interfaces:MUGModel")
SUITES = Registry("prompt suite", "milr.suites", "milr.suites")


def _ensure_builtin_index() -> None:
    """Import the light-weight index modules that declare the built-in components."""
    for mod in ("milr.critics", "milr.search", "milr.models", "milr.suites"):
        importlib.import_module(mod)


REGISTRIES: dict[str, Registry] = {
    "critics": CRITICS,
    "searches": SEARCHES,
    "models": MODELS,
    "suites": SUITES,
}
