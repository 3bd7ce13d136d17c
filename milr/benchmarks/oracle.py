"""The oracle rule: is a run's search guided by the very scorer its benchmark is reported with?

MILR's headline numbers (arXiv 2509.22761: GenEval 0.78 -> 0.95, T2I-CompBench 39.2 -> 53.3, WISE
0.35 -> 0.63) were obtained with the benchmark's own evaluator as the search reward, and WISE's
judge is shown the intended answer. Such numbers are upper bounds, not comparable with runs guided
by other critics; this module marks them so no table mixes the two silently.

The rule is data, not code: each prompt suite's card (:class:`milr.cards.SuiteCard`) declares

* ``scorers``: per category (``"*"`` for all), the critic names that ARE the benchmark's scorer;
* ``proxies``: critic names that imitate it (e.g. ``detector`` with GenEval's rules on YOLO), which
  are labelled, never flagged;
* ``privileged``: metadata fields holding the answer (WISE's ``explanation``).

A critic card declares what privileged field it reads: ``needs_metadata`` (always) or
``extra["privileged_args"] = {constructor_argument: field}`` (when that argument is true).

A run is **oracle** when a search critic (ensemble members included) is a declared scorer for a
category among its prompts, or reads a privileged field the prompts carry. Held-out ``evaluate``
critics never count: evaluating with the benchmark's scorer is the protocol.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence


@dataclass(frozen=True)
class OracleVerdict:
    """The rule's answer for one run (or an unknown one, for images of unknown origin)."""

    oracle: Optional[bool]  # None: not known (images from elsewhere, or no benchmark declared)
    reasons: tuple[str, ...] = ()
    proxies: tuple[str, ...] = ()

    def label(self) -> str:
        """The table cell: ``yes``, ``no``, ``proxy`` or ``unknown``."""
        if self.oracle:
            return "yes"
        if self.proxies:
            return "proxy"
        return "unknown" if self.oracle is None else "no"

    def as_manifest(self) -> dict:
        return {"oracle": self.oracle, "oracle_reasons": list(self.reasons), "oracle_proxies": list(self.proxies)}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "OracleVerdict":
        if "oracle" not in manifest:  # a run recorded before the rule existed
            return cls(None, ("run recorded without an oracle check",))
        return cls(manifest["oracle"], tuple(manifest.get("oracle_reasons") or ()), tuple(manifest.get("oracle_proxies") or ()))

    def header(self) -> Optional[str]:
        """One markdown line for a run's summary, or None when there is nothing to warn about."""
        if self.oracle:
            return "> **Oracle run**: " + "; ".join(self.reasons) + ". Not comparable with runs guided by other critics."
        if self.proxies:
            return "> Proxy critic (not the benchmark's scorer, so not flagged oracle): " + "; ".join(self.proxies) + "."
        return None


def flatten_critics(specs: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, dict]]:
    """(name, arguments) of every critic in ``specs``, descending into ensemble ``members``."""
    for spec in specs:
        if not isinstance(spec, Mapping) or "name" not in spec:
            continue
        args = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        yield str(spec["name"]), args
        members = args.get("members")
        if isinstance(members, Sequence) and not isinstance(members, str):
            yield from flatten_critics(m for m in members if isinstance(m, Mapping))


def _canonical(name: str) -> str:
    from milr.registry import CRITICS

    try:
        return CRITICS.resolve_name(name)
    except Exception:  # an unknown name cannot be a declared scorer; keep it as written
        return name


def _critic_card(name: str) -> Any:
    from milr.registry import CRITICS

    try:
        return CRITICS.card(name)
    except Exception:  # an import path that may not be imported here, or a broken plugin
        return None


def privileged_reads(name: str, args: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    """The privileged ``fields`` critic ``name`` with ``args`` reads, per its card."""
    fields = set(fields)
    if not fields:  # nothing privileged in these prompts: no need to look the critic up
        return []
    card = _critic_card(name)
    if card is None:
        return []
    read = [f for f in getattr(card, "needs_metadata", ()) if f in fields]
    for arg, field in (getattr(card, "extra", None) or {}).get("privileged_args", {}).items():
        if field not in fields or field in read:
            continue
        if arg in args:
            on = bool(args[arg])
        else:  # the constructor's default decides
            from milr.registry import CRITICS

            try:
                param = inspect.signature(CRITICS.get(name).__init__).parameters.get(arg)
            except Exception:
                param = None
            on = param is not None and param.default is not inspect.Parameter.empty and bool(param.default)
        if on:
            read.append(field)
    return read


def oracle_verdict(critics: Iterable[Mapping[str, Any]], suite: Optional[str], categories: Iterable[str] = (),
                   privileged: Iterable[str] = ()) -> OracleVerdict:
    """Apply the rule to search ``critics`` (recipe specs) on prompts of ``suite`` in ``categories``.

    ``privileged``: the privileged metadata fields the prompts actually carry (default: the suite
    card's). With no suite declaring a benchmark, the scorer check cannot be made (``oracle`` is
    None) unless a privileged field is read, which flags the run anyway.
    """
    from milr.registry import SUITES

    card = None
    if suite:
        try:
            card = SUITES.card(suite)
        except Exception:
            card = None
    categories = set(categories)
    fields = set(privileged) | set(getattr(card, "privileged", ()) or ())
    scorers = dict(getattr(card, "scorers", {}) or {})
    proxies = dict(getattr(card, "proxies", {}) or {})
    reasons: list[str] = []
    labels: list[str] = []
    for name, args in flatten_critics(critics):
        key = _canonical(name)
        hit = sorted(c for c, names in scorers.items() if key in names and (c == "*" or not categories or c in categories))
        if hit:
            where = "every category" if "*" in hit else ("category " if len(hit) == 1 else "categories ") + ", ".join(hit)
            reasons.append(f"search critic {key!r} is the evaluation scorer of suite {suite!r} ({where})")
        elif key in proxies:
            labels.append(f"{key}: {proxies[key]}")
        for f in privileged_reads(name, args, fields):
            reasons.append(f"search critic {key!r} reads the privileged field {f!r} (the intended answer)")
    if reasons:
        return OracleVerdict(True, tuple(dict.fromkeys(reasons)), tuple(dict.fromkeys(labels)))
    if card is None or not scorers:
        why = f"suite {suite!r} declares no benchmark scorer" if suite else "prompts from a file or inline: no benchmark declared"
        return OracleVerdict(None, (why,), tuple(dict.fromkeys(labels)))
    return OracleVerdict(False, (), tuple(dict.fromkeys(labels)))


def recipe_verdict(recipe: Mapping[str, Any], tasks: Optional[Sequence[Any]] = None) -> OracleVerdict:
    """The rule for a resolved recipe (a dict, as in ``manifest.json``) and its tasks.

    The suite is ``prompts.suite``, or, for prompts from a file or inline, the suite of the
    benchmark named by the tasks' ``metadata["benchmark"]`` when they all agree.
    """
    if tasks is None:
        from milr.prompts import load_tasks
        from milr.recipe import PromptsSpec

        tasks = load_tasks(PromptsSpec(**recipe["prompts"]))
    suite = (recipe.get("prompts") or {}).get("suite")
    if suite is None:
        # Each benchmark's suite is registered under the benchmark's name with a card naming it (read
        # from the registry, not milr.benchmarks: the run folder code calls this rule).
        from milr.registry import SUITES

        named = {(t.metadata or {}).get("benchmark") for t in tasks}
        name = next(iter(named)) if len(named) == 1 else None
        if name in SUITES and getattr(SUITES.card(name), "benchmark", None) == name:
            suite = name
    categories = {str((t.metadata or {}).get("tag")) for t in tasks if (t.metadata or {}).get("tag") is not None}
    privileged = {f for t in tasks for f in (t.metadata or {}).get("privileged", ()) if f in (t.metadata or {})}
    return oracle_verdict(recipe.get("critics") or [], suite, categories, privileged)
