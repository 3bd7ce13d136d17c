"""Speed paths of the Janus-Pro adapter (``milr.models.janus_pro``) give the plain path's results.

On the tests' tiny random Janus (``test_janus_pro.save_tiny_janus``), fp32 on the CPU:

* the preallocated key/value buffer (``kv_cache="static"``) against transformers' ``DynamicCache``;
* ``compile=True`` (``torch.compile`` of the decoding step, ``eager`` backend to keep it seconds);
* prompts encoded separately, merged with left padding (``merge_rows``), against one call per
  prompt: text with forced prefixes of different lengths, and image tokens with a generator per
  prompt; ``split_rows`` undoes ``merge_rows``;
* the remembered plan continuation (``plan_cache``) and the chunked pixel decoder.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from test_janus_pro import PROMPTS, save_tiny_janus  # noqa: E402

from milr.models.janus_pro import JanusPro, _resolve_attn, _resolve_dtype  # noqa: E402

FORCED = [torch.tensor([20, 21, 22]), torch.tensor([30])]  # different lengths on purpose


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-janus-batching")
    save_tiny_janus(folder)
    return folder


def _janus(path, **kw) -> JanusPro:
    return JanusPro(checkpoint=str(path), device="cpu", dtype="float32", max_text_tokens=8, **kw)


@pytest.fixture(scope="module")
def janus(tiny_path):
    return _janus(tiny_path, plan_cache=0)


@pytest.fixture(scope="module")
def parts(janus):
    """One state per prompt (different token lengths), as a runner holds them before merging."""
    return [janus.encode_prompts([p]) for p in PROMPTS]


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_gpu_defaults_are_bf16_and_sdpa():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _resolve_dtype(None, cuda) == torch.bfloat16 and _resolve_dtype(None, cpu) == torch.float32
    assert _resolve_attn(None, cuda) == "sdpa" and _resolve_attn(None, cpu) is None
    assert _resolve_attn("eager", cuda) == "eager"  # an explicit choice wins


def test_static_buffer_equals_dynamic_cache(janus, monkeypatch):
    state = janus.encode_prompts(PROMPTS)
    ctx = janus.image_context(state, ["a plan", "another plan"])
    assert janus.kv_cache == "static"
    text_s = janus.reason(state, prefix_ids=FORCED)
    img_s = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(janus, "kv_cache", "dynamic")
    text_d = janus.reason(state, prefix_ids=FORCED)
    img_d = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(4))
    assert [x.tolist() for x in text_s.ids] == [x.tolist() for x in text_d.ids]
    assert torch.equal(img_s.tokens, img_d.tokens)
    torch.testing.assert_close(img_s.hidden, img_d.hidden, atol=1e-5, rtol=1e-5)
    for a, b in zip(text_s.hidden, text_d.hidden):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compiled_decoding_step_gives_the_same_tokens(tiny_path, janus):
    from torch._dynamo.utils import counters

    compiled = _janus(tiny_path, compile=True, compile_backend="eager")
    assert compiled.compiled and not janus.compiled
    ctx = janus.image_context(janus.encode_prompts(PROMPTS[:1]))
    counters.clear()
    a = compiled.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(8))
    assert counters["stats"]["unique_graphs"] >= 1  # the step did go through dynamo
    b = janus.sample_image(ctx, num_samples=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.hidden, b.hidden, atol=1e-5, rtol=1e-5)


def test_merged_states_reason_like_each_prompt_alone(janus, parts):
    merged = janus.merge_rows(parts)
    assert not merged.prefix.attention_mask.all()  # the prompts differ in length: left padding
    before = janus.counter.text_tokens
    together = janus.reason(merged, prefix_ids=FORCED)
    spent_together = janus.counter.text_tokens - before
    alone = [janus.reason(p, prefix_ids=[f]) for p, f in zip(parts, FORCED)]
    assert janus.counter.text_tokens - before - spent_together == spent_together
    for r, one in enumerate(alone):
        assert together.ids[r].tolist() == one.ids[0].tolist()
        assert together.texts[r] == one.texts[0]
        torch.testing.assert_close(together.hidden[r], one.hidden[0], atol=1e-5, rtol=1e-5)


def test_merged_contexts_sample_like_each_prompt_alone(janus, parts):
    ctxs = [janus.image_context(p, [plan]) for p, plan in zip(parts, ["a plan", "a much longer plan than that"])]
    merged = janus.merge_rows(ctxs)
    assert merged.texts == [c.texts[0] for c in ctxs]
    together = janus.sample_image(merged, num_samples=2, generator=_gens(11, 12))
    alone = [janus.sample_image(c, num_samples=2, generator=g) for c, g in zip(ctxs, _gens(11, 12))]
    assert torch.equal(together.tokens, torch.cat([a.tokens for a in alone]))
    torch.testing.assert_close(together.hidden, torch.cat([a.hidden for a in alone]), atol=1e-5, rtol=1e-5)
    # Greedy, and with a forced image prefix: the same rows again.
    forced = together.tokens[:, :3]
    g_t = janus.sample_image(merged, num_samples=2, prefix_tokens=forced, temperature=0.0)
    g_a = [janus.sample_image(c, num_samples=2, prefix_tokens=forced[2 * i : 2 * i + 2], temperature=0.0)
           for i, c in enumerate(ctxs)]
    assert torch.equal(g_t.tokens, torch.cat([a.tokens for a in g_a]))


def test_prompts_sharing_a_generator_draw_as_one_call(janus):
    """Consecutive rows with the same generator object draw together, as an unbatched call on them."""
    state = janus.encode_prompts([PROMPTS[0]] * 2)  # a search's 2-row state of one prompt
    ctx = janus.image_context(state)
    g = torch.Generator().manual_seed(21)
    shared = janus.sample_image(ctx, generator=[g, g])
    plain = janus.sample_image(ctx, generator=torch.Generator().manual_seed(21))
    assert torch.equal(shared.tokens, plain.tokens)
    own = janus.sample_image(ctx, generator=_gens(21, 21))  # two streams in the same state: equal rows
    assert torch.equal(own.tokens[0], own.tokens[1])
    with pytest.raises(ValueError, match="generators"):
        janus.sample_image(ctx, generator=_gens(1))


def test_split_undoes_merge(janus, parts):
    for items in (parts, [janus.image_context(p) for p in parts]):
        merged = janus.merge_rows(items)
        back = janus.split_rows(merged, [1, 1])
        for got, want in zip(back, items):
            assert type(got) is type(want) and got.prompts == want.prompts
            assert torch.equal(got.prefix.input_ids, want.prefix.input_ids)
            assert torch.equal(got.prefix.attention_mask, want.prefix.attention_mask)
            assert torch.equal(got.prefix.last_hidden, want.prefix.last_hidden)
            assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got.prefix.kv, want.prefix.kv))
    with pytest.raises(ValueError, match="partition"):
        janus.split_rows(janus.merge_rows(parts), [1])
    with pytest.raises(TypeError, match="all states"):
        janus.merge_rows([parts[0], janus.image_context(parts[1])])


def test_unchanged_plan_prefix_is_not_decoded_again(tiny_path, monkeypatch):
    janus = _janus(tiny_path, plan_cache=4)
    state = janus.encode_prompts(PROMPTS)
    calls = []
    decode = janus._decode_text
    monkeypatch.setattr(janus, "_decode_text", lambda prefix, index, *a: calls.append(index.tolist()) or decode(prefix, index, *a))
    first = janus.reason(state, prefix_ids=FORCED)
    spent = janus.counter.text_tokens
    again = janus.reason(state, prefix_ids=FORCED)
    assert calls == [[0, 1]]  # the second call decoded nothing
    assert [x.tolist() for x in again.ids] == [x.tolist() for x in first.ids]
    assert janus.counter.text_tokens == 2 * spent  # ... and still counts the tokens (budgets unchanged)
    again.hidden[0].add_(1)  # callers own what they get back
    assert not torch.equal(janus.reason(state, prefix_ids=FORCED).hidden[0], again.hidden[0])
    janus.reason(state, prefix_ids=[FORCED[0], torch.tensor([31])])
    assert calls[-1] == [1]  # only the row whose prefix changed
    for i in range(6):  # the memory stays bounded
        janus.reason(state, prefix_ids=[torch.tensor([40 + i]), FORCED[1]])
    assert len(janus._plans) == 4


def test_pixel_decoder_chunks_equal_one_call(janus, monkeypatch):
    tokens = torch.randint(0, janus.codebook_size, (5, janus.image_tokens), generator=torch.Generator().manual_seed(0))
    whole = janus.decode_image(tokens)
    monkeypatch.setattr(janus, "decode_chunk", 2)
    calls = []
    raw = janus.model.decode_image_tokens
    monkeypatch.setattr(janus.model, "decode_image_tokens", lambda t: calls.append(len(t)) or raw(t))
    chunked = janus.decode_image(tokens)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)  # conv rounding differs by batch size


@pytest.mark.parametrize("kw, match", [({"kv_cache": "paged"}, "kv_cache"), ({"decode_chunk": 0}, "decode_chunk"),
                                       ({"plan_cache": -1}, "plan_cache")])
def test_bad_speed_arguments(tiny_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _janus(tiny_path, **kw)


def test_gpu_throughput_benchmark_runs_on_cpu(capsys):
    """benchmarks/gpu_throughput.sh's Python part (random Janus, roofline, timed batches) on the tiny
    shape, as ``gpu_throughput.sh --cpu-smoke`` runs it; the shell script itself parses."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert subprocess.run(["bash", "-n", str(root / "benchmarks" / "gpu_throughput.sh")]).returncode == 0
    sys.path.insert(0, str(root / "benchmarks"))
    import janus_random

    janus_random.print_roofline("tiny")
    janus_random.print_throughput("tiny", "cpu", [1, 2], repeats=1)
    out = capsys.readouterr().out
    assert "| 2 (4) | " in out and "floor ms/step" in out and "GenEval MILR-20" in out
    seven = janus_random.roofline("janus-pro-7b", batches=(1,))[0]  # the public shape: 7B, bf16
    assert 12.0 < seven["weight_gb"] < 12.6 and seven["byte_ms"] > 50 * seven["flop_ms"]


def test_loading_recipes_imports_no_heavy_library(tmp_path):
    """Start-up imports only what a recipe uses: validating the Janus-Pro and quickstart recipes loads
    neither transformers, open_clip nor ultralytics, and no critic module the recipes do not name."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from milr.recipe import load_recipe\n"
        "load_recipe('janus-pro-7b-wise'); load_recipe('quickstart-oracle')\n"
        "heavy = [m for m in ('transformers', 'open_clip', 'ultralytics', 'timm') if m in sys.modules]\n"
        "print(json.dumps([heavy, sorted(m for m in sys.modules if m.startswith('milr.critics.'))]))\n"
    )
    env = {**os.environ, "MILR_CRITICS_FILE": str(tmp_path / "none.yaml")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy, critics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert heavy == []
    # wise_judge (and the api_judge it builds on) and world_oracle are the recipes' critics.
    assert set(critics) <= {"milr.critics.wise_judge", "milr.critics.api_judge", "milr.critics.questions",
                                  "milr.critics.shipped", "milr.critics.world_oracle"}


def test_milr_run_batched_across_prompts_equals_one_by_one(tiny_path, tmp_path, monkeypatch):
    """A recipe run with run.batch_prompts: 2 (the runner merges the prompts' Janus calls through
    merge_rows / split_rows) gives each prompt the record it gets alone."""
    import yaml

    from milr.records import RunRecord
    from milr.runner import run_recipe

    def run(batch: int) -> dict:
        data = {
            "model": {"name": "janus_pro", "checkpoint": str(tiny_path), "max_text_tokens": 5},
            "critics": [{"name": "self_judge", "questions": "prompt"}],
            "search": {"name": "reinforce", "mode": "both", "steps": 2, "text_fraction": 0.4, "image_fraction": 0.1},
            "prompts": {"inline": PROMPTS},
            "run": {"seed": 0, "device": "cpu", "dtype": "float32", "batch_prompts": batch,
                    "output_dir": str(tmp_path / f"runs{batch}")},
        }
        path = tmp_path / f"janus-b{batch}.yaml"
        path.write_text(yaml.safe_dump(data))
        return {r["prompt"]: r for r in RunRecord(run_recipe(path, progress=False)).results()}

    merged = []
    merge = JanusPro.merge_rows
    monkeypatch.setattr(JanusPro, "merge_rows", lambda self, parts: merged.append(len(parts)) or merge(self, parts))
    alone = run(1)
    assert merged == []
    together = run(2)
    assert merged and max(merged) == 2  # the runner did merge the two prompts' Janus calls
    assert set(alone) == set(together) == set(PROMPTS)
    for p in PROMPTS:
        a, b = alone[p], together[p]
        assert a["budget"]["text_tokens"] == b["budget"]["text_tokens"] > 0
        assert a["budget"]["image_tokens"] == b["budget"]["image_tokens"] > 0
        assert a["initial"]["text"] == b["initial"]["text"] and a["steps"] == b["steps"]
        assert a["final"]["reward"] == pytest.approx(b["final"]["reward"], abs=1e-5)
