"""The component factory: every model, critic, ensemble member, prefilter and teacher is built here.

One rule for all builders (the runner, :class:`~milr.critics.ensemble.Ensemble` members,
``best_of_n``'s prefilter, the distillation teacher, ``milr.create_critic``, ``milr eval`` and
``milr agree``), after pyiqa's ``create_metric`` and LightningCLI's "name plus arguments":

* the class comes from its registry (a registered name or ``module:Class``);
* what the run owns is injected from the constructor's signature: a parameter named ``model``
  receives the loaded MUG model, ``device`` the run's device, ``dtype`` the run's dtype (only
  where the recipe does not set them);
* the arguments are recorded on the component as ``init_args`` -- every signature argument with
  its default filled in, the injected model replaced by its weights fingerprint
  (:meth:`milr.interfaces.MUGModel.fingerprint`) -- unless the component records its own
  (resolved paths, weight hashes). A critic's cache identity
  (:meth:`milr.interfaces.Critic.identity`) is derived from them, so two critics built with
  different arguments, or judging with different weights, never share score-cache entries.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from milr.devices import resolve_device  # noqa: F401  (the runner and create_critic import it from here)
from milr.errors import UserError
from milr.interfaces import Critic

if TYPE_CHECKING:
    from milr.recipe import Recipe
    from milr.registry import Registry

# Arguments the factory supplies from the run rather than from the recipe.
INJECTED = ("model", "device", "dtype")


def _parameters(obj: Any) -> Mapping[str, inspect.Parameter]:
    """The constructor's (or factory function's) parameters; none when there is no usable signature."""
    if inspect.isclass(obj) and obj.__init__ is object.__init__:
        return {}  # no constructor of its own: object's (*args, **kwargs) accepts nothing
    try:
        return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
    except (TypeError, ValueError):
        return {}


def accepts(obj: Any, name: str) -> bool:
    """Whether ``obj`` (a class or a factory function) takes a keyword argument ``name``."""
    params = _parameters(obj)
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _named(obj: Any, name: str) -> bool:
    """Whether the signature names ``name`` itself (``model`` is never passed through ``**kwargs``)."""
    return name in _parameters(obj)


def full_args(cls: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every signature argument with its default filled in (``**kwargs`` extras kept), device dropped.

    The device never changes a score's meaning, so it stays out of the record that keys the cache.
    A model object is replaced by its fingerprint (its weights, not its address, identify it).
    """
    out: dict[str, Any] = {}
    for p in _parameters(cls).values():
        if p.name == "self" or p.name.startswith("_") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not inspect.Parameter.empty:
            out[p.name] = p.default
    out.update(kwargs)
    out.pop("device", None)
    model = out.get("model")
    if model is not None and callable(getattr(model, "fingerprint", None)):
        out["model"] = model.fingerprint()
    elif "model" in out:
        out["model"] = None if model is None else type(model).__qualname__
    return out


def build_component(registry: "Registry", name: str, args: Mapping[str, Any], *, model: Any = None,
                    device: Optional[str] = None, dtype: Optional[str] = None) -> Any:
    """Build ``registry``'s component ``name`` with ``args``, injecting model/device/dtype (module docstring)."""
    cls = registry.get(name)
    kwargs = {**registry.tag_args(name), **args}  # an "arch.tag" name: the tag's presets under the given arguments
    if _named(cls, "model") and "model" not in kwargs:
        kwargs["model"] = model
    if device is not None and accepts(cls, "device") and "device" not in kwargs:
        kwargs["device"] = device
    if dtype is not None and accepts(cls, "dtype") and "dtype" not in kwargs:
        kwargs["dtype"] = dtype
    obj = cls(**kwargs)
    if not isinstance(getattr(obj, "init_args", None), dict):  # the component's own record wins
        try:
            obj.init_args = full_args(cls, kwargs)
        except AttributeError:  # a component with __slots__ or a read-only attribute: nothing to record on
            pass
    if getattr(obj, "registry_name", None) is None and name in registry:
        try:
            obj.registry_name = registry.resolve_name(name)
        except (AttributeError, UserError):
            pass
    return obj


def build_model(recipe: "Recipe") -> Any:
    """The recipe's MUG model on the run's device and dtype."""
    from milr.registry import MODELS

    return build_component(MODELS, recipe.model.name, recipe.model.args,
                           device=resolve_device(recipe.run.device), dtype=recipe.run.dtype)


def build_critic(spec: Any, model: Any, device: Optional[str], cache: Any = None, dtype: Optional[str] = None) -> Critic:
    """A critic from ``spec`` (``name`` + ``args``), optionally behind the score cache ``cache``."""
    from milr.registry import CRITICS

    critic = build_component(CRITICS, spec.name, spec.args, model=model, device=device, dtype=dtype)
    if cache is not None:
        from milr.critics.cache import CachedCritic

        critic = CachedCritic(critic, cache)
    return critic


def critic_labels(specs: list) -> list[str]:
    """Names of critics in results and ensembles: ``as:`` when given, else the critic's name; critics
    sharing a name are told apart by their checkpoint folder's name (``trained`` critics) or ``#i``."""
    from milr.config import RecipeError

    names = [s.name for s in specs]
    labels: list[str] = []
    for i, s in enumerate(specs):
        given = getattr(s, "label", None)
        label = given or (Path(str(s.args["path"])).name if names.count(s.name) > 1 and s.args.get("path") else s.name)
        if label in labels and not given:
            label = f"{s.name}#{i}"
        if label in labels:
            raise RecipeError(None, f"critics.{i}.as", f"two critics are named {label!r}; give each a distinct 'as:' label")
        labels.append(label)
    return labels


def build_ensemble(specs: list, combine: Optional[Mapping[str, Any]], model: Any, device: Optional[str],
                   cache: Any = None, dtype: Optional[str] = None, always: bool = False) -> tuple[Critic, dict[str, Critic]]:
    """(combined critic, {label: member}): one critic as itself (unless ``always``), several (or a
    ``combine``) as an :class:`~milr.critics.ensemble.Ensemble`."""
    members = {key: build_critic(spec, model, device, cache, dtype) for key, spec in zip(critic_labels(specs), specs)}
    if not always and len(members) == 1 and specs[0].weight == 1.0 and not combine:
        return next(iter(members.values())), members
    from milr.registry import CRITICS

    # Through the registry, not an import: milr.critics.ensemble builds its own members with this module.
    ensemble = CRITICS.get("ensemble")
    combined = ensemble(members=list(members.values()), weights=[s.weight for s in specs], names=list(members),
                        **(combine or {}))
    return combined, members


def build_critics(recipe: "Recipe", model: Any, device: str) -> tuple[Critic, dict[str, Critic], dict[str, Critic]]:
    """(combined critic, {name: critic}, {name: eval critic}) of a recipe, behind its score cache."""
    from milr.critics.cache import ScoreCache

    cache = ScoreCache(recipe.run.cache_dir)
    combined, members = build_ensemble(recipe.critics, recipe.combine, model, device, cache, recipe.run.dtype)
    evals = {key: build_critic(spec, model, device, cache, recipe.run.dtype)
             for key, spec in zip(critic_labels(recipe.evaluate), recipe.evaluate)}
    return combined, members, evals


# -- milr.create_critic ------------------------------------------------------------------------
def _spec(name_or_path: Union[str, Path], kwargs: dict) -> dict:
    from milr.registry import CRITICS

    ref = str(name_or_path)
    p = Path(ref).expanduser()
    if ref not in CRITICS and ((p / "critic.json").is_file() or (p.name == "critic.json" and p.is_file())):
        return {"name": "trained", "path": ref, **kwargs}
    return {"name": ref, **kwargs}


def create_critic(name_or_path: Union[str, Path], *, device: str = "cpu", as_loss: bool = False, model: Any = None,
                  dtype: Optional[str] = None, **kwargs: Any) -> Critic:
    """A critic by registered name or trained-critic folder, with its arguments as keywords.

    pyiqa's ``create_metric`` for critics, through the validation
    (:func:`milr.recipe.validate_component_args`) and builder a recipe uses, so a critic made here
    scores exactly as it does in a run. ``device``: ``cpu``, ``cuda``, ``auto``...; ``model``: the
    loaded MUG model for critics that judge with it (``self_judge``); ``as_loss``: scores keep
    gradients (``requires_grad=True``), refused for critics whose card says they are not
    differentiable. Errors are :class:`milr.errors.UserError` (unknown name with did-you-mean,
    unknown or ill-typed argument).
    """
    import milr.critics  # noqa: F401  (the index of built-in critics and the user's names)
    from milr.recipe import CriticSpec, RecipeErrors, validate_component_args
    from milr.registry import CRITICS

    data = _spec(name_or_path, kwargs)
    if as_loss:
        card = CRITICS.card(CRITICS.resolve_name(data["name"]))
        if card is not None and not card.differentiable:
            raise UserError(f"critic {data['name']!r} is not differentiable (its card says so): it cannot be used as_loss")
        data["requires_grad"] = True
    spec = CriticSpec.model_validate(data)
    errors = validate_component_args(CRITICS, spec, "critic", None)
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    return build_critic(spec, model, resolve_device(device), dtype=dtype)


__all__ = ["INJECTED", "accepts", "build_component", "build_critic", "build_critics", "build_ensemble", "build_model",
           "create_critic", "critic_labels", "full_args", "resolve_device"]
