"""Registry: lazy import, decorator registration, did-you-mean, import paths, cards."""

import re
import subprocess
import sys

import pytest

from milr.cards import CriticCard
from milr.registry import CRITICS, MODELS, SEARCHES, Registry, UnknownComponentError


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownComponentError) as e:
        CRITICS.get("clip_scor")
    assert "clip_score" in e.value.suggestions
    assert "did you mean 'clip_score'" in str(e.value)


def test_lazy_entry_not_imported_until_asked(tmp_path, monkeypatch):
    mod = tmp_path / "lazy_mod_for_test.py"
    mod.write_text("IMPORTED = True\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", "milr.test-things")
    reg.register_lazy("thing", "lazy_mod_for_test:Thing", card=CriticCard(summary="a thing"))
    assert "lazy_mod_for_test" not in sys.modules
    assert reg.card("thing").summary == "a thing"  # cards come from the index
    assert "lazy_mod_for_test" not in sys.modules
    cls = reg.get("thing")
    assert cls.__name__ == "Thing" and "lazy_mod_for_test" in sys.modules


def test_decorator_registers_and_rejects_duplicates():
    reg = Registry("widget", "milr.test-widgets")

    @reg.register("w")
    class W:
        pass

    assert reg.get("w") is W and W.registry_name == "w"
    with pytest.raises(ValueError):

        @reg.register("w")
        class W2:
            pass


def test_import_path_names_and_arch_tag():
    cls = CRITICS.get("doubles:BrightnessCritic")
    assert cls.__name__ == "BrightnessCritic"
    reg = Registry("model", "milr.test-models")
    reg.register_lazy("arch", "doubles:BrightnessCritic", tags={"some_tag": {"threshold": 0.3}})
    assert reg.resolve_name("arch.some_tag") == "arch"  # timm-style weight variants
    assert reg.tag_args("arch.some_tag") == {"threshold": 0.3} and reg.tag_args("arch") == {}
    # a tag is a real preset: one not declared is an error with did-you-mean (issue 14: it was dropped)
    with pytest.raises(UnknownComponentError, match=r"unknown tag 'some_tg' of model 'arch'; did you mean 'arch.some_tag'\?"):
        reg.resolve_name("arch.some_tg")


def test_builtin_indexes_declare_the_components():
    assert {"clip_score", "detector", "image_reward", "vlm_judge", "self_judge", "api_judge", "ensemble", "world_oracle"} <= set(CRITICS.names())
    assert {"reinforce", "best_of_n", "cma_es"} <= set(SEARCHES.names())
    assert {"minimug", "janus_pro"} <= set(MODELS.names()) and MODELS.resolve_name("janus-pro") == "janus_pro"
    card = CRITICS.card("image_reward")
    assert card.max_text_tokens == 35 and card.higher_is_better


def test_milr_list_is_fast_and_shows_cards():
    # "Fast" is checked by what it loads (no torch, below), not by a wall-clock bound on a shared machine.
    out = subprocess.run([sys.executable, "-m", "milr.cli", "list", "critics"], capture_output=True, text=True, check=True)
    for name in ("clip_score", "detector", "image_reward", "vlm_judge", "self_judge", "api_judge", "ensemble"):
        assert name in out.stdout
    assert "higher is better" in out.stdout
    # and it must not import torch at all
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, milr.cli; milr.cli.main(['list','critics']); print('TORCH' if 'torch' in sys.modules else 'NOTORCH')"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip().endswith("NOTORCH")


# -- the built-in indexes as data (index.yaml) -------------------------------------------------
def _index(tmp_path, text: str):
    from milr.cards import CriticCard, register_index
    from milr.registry import Registry

    path = tmp_path / "index.yaml"
    path.write_text(text)
    reg = Registry("critic", "milr.test-none")
    register_index(reg, CriticCard, path, "milr.critics")
    return reg


def test_index_yaml_builds_typed_cards(tmp_path):
    reg = _index(tmp_path, "toy:\n  target: toy:Toy\n  aliases: [t]\n  tags: {fast: {steps: 1}}\n"
                           "  card: {summary: s, score_range: [-.inf, 1], needs_metadata: [include], input_size: 32}\n")
    card = reg.card("toy")
    assert card.score_range == (float("-inf"), 1.0) and isinstance(card.score_range[1], float)
    assert card.needs_metadata == ("include",) and card.input_size == 32
    assert reg.resolve_name("t") == "toy" and reg.tags("toy") == {"fast": {"steps": 1}}


@pytest.mark.parametrize("card, message", [
    ("{summary: s, scroe_range: [0, 1]}", "toy.card: unknown card field(s) ['scroe_range']"),
    ("{summary: s, score_range: [0, x]}", "toy.card.score_range.1: expected float, got 'x'"),
    ("{summary: s, input_size: true}", "toy.card.input_size: expected int, got True"),
    ("{summary: s, score_range: [0, 1, 2]}", "toy.card.score_range: expected a list of 2 items"),
])
def test_index_yaml_errors_name_the_file_and_the_entry(tmp_path, card, message):
    from milr.cards import CardIndexError

    with pytest.raises(CardIndexError, match=re.escape("critics/index.yaml: " + message)):
        _index(tmp_path, f"toy:\n  target: toy:Toy\n  card: {card}\n")
    with pytest.raises(CardIndexError, match=re.escape("critics/index.yaml: toy: expected target")):
        _index(tmp_path, "toy:\n  card: {summary: s}\n")


def test_registry_names_are_snake_case():
    """Components are code: critics, searches and models are named like their modules (snake_case);
    tags are lower case after a dot (timm's arch.tag). Prompt suites are data sets named as published."""
    import re

    for registry in (CRITICS, SEARCHES, MODELS):
        for name in (n for n in registry.names() if ":" not in n):  # not the import paths tests used
            assert re.fullmatch(r"[a-z][a-z0-9_]*", name), f"{registry.kind} {name!r} is not snake_case"
            for tag in registry.tags(name):
                assert re.fullmatch(r"[a-z0-9][a-z0-9_]*", tag), f"{registry.kind} {name}.{tag}"

