"""Yes/no judges: question builder, vlm_judge (tiny LLaVA), self_judge (toy MUG), api_judge (fake server)."""

import base64
import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from toy_mug import ToyMUG

from milr.critics.api_judge import APIBudgetExceeded, APIJudge, APIJudgeError, p_yes_from_response
from milr.critics.questions import (
    PROMPT_TEMPLATES,
    Question,
    build_questions,
    decomposed_questions,
    plural,
    prompt_question,
)
from milr.critics.self_judge import SelfJudge
from milr.registry import CRITICS

TWO_OBJECT = {"tag": "two_object", "include": [{"class": "tv", "count": 1}, {"class": "cell phone", "count": 1}]}
COUNTING = {"tag": "counting", "include": [{"class": "wine glass", "count": 2}], "exclude": [{"class": "wine glass", "count": 3}]}
POSITION = {"tag": "position", "include": [{"class": "sink", "count": 1}, {"class": "tie", "count": 1, "position": ["above", 0]}]}
COLOR_ATTR = {"tag": "color_attr", "include": [{"class": "train", "count": 1, "color": "red"}, {"class": "bear", "count": 1, "color": "purple"}]}


def brightness_images(values, size=16):
    return torch.stack([torch.full((3, size, size), float(v)) for v in values])


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------
def test_decomposed_questions_cover_each_clause():
    assert [q.text.split("?")[0] for q in decomposed_questions(TWO_OBJECT)] == [
        "Is there a tv in the image", "Is there a cell phone in the image"]
    counting = decomposed_questions(COUNTING)  # "exactly two" already rules out three: no exclude question
    assert [(q.kind, q.text.split("?")[0]) for q in counting] == [("count", "Are there exactly two wine glasses in the image")]
    pos = decomposed_questions(POSITION)
    assert [q.kind for q in pos] == ["object", "object", "position"]
    assert pos[2].text.startswith("Is the tie above the sink?")
    left = decomposed_questions({"include": [{"class": "dog"}, {"class": "cat", "position": ["left of", 0]}]})
    assert left[2].text.startswith("Is the cat on the left of the dog?")
    colors = decomposed_questions(COLOR_ATTR)
    assert [q.kind for q in colors] == ["object", "color", "object", "color"]
    assert colors[1].text.startswith("Is the train red?") and colors[3].text.startswith("Is the bear purple?")
    excl = decomposed_questions({"include": [{"class": "cat", "count": 1}], "exclude": [{"class": "cat", "count": 2}]})
    assert excl[-1] == Question(excl[-1].text, "exclude", expect_yes=False) and "two or more cats" in excl[-1].text


def test_prompt_questions_follow_the_category_template():
    assert prompt_question("a photo of two cats", "counting").text == PROMPT_TEMPLATES["counting"].format(prompt="a photo of two cats")
    assert prompt_question("x", "unknown_tag").text == PROMPT_TEMPLATES["default"].format(prompt="x")
    custom = prompt_question("x", "colors", {"colors": "Colour check: {prompt}?"})
    assert custom.text == "Colour check: x?"
    # auto: decomposed with GenEval metadata, whole prompt without
    assert len(build_questions("p", COLOR_ATTR, "auto")) == 4
    assert build_questions("p", {}, "auto")[0].kind == "prompt"
    assert build_questions("p", COLOR_ATTR, "prompt")[0].kind == "prompt"


def test_plural_and_bad_metadata():
    assert [plural(w) for w in ("wine glass", "person", "bus", "knife", "sheep", "toothbrush", "cake", "computer mouse")] == [
        "wine glasses", "people", "buses", "knives", "sheep", "toothbrushes", "cakes", "computer mice"]
    with pytest.raises(ValueError, match="non-empty 'include'"):
        decomposed_questions({"tag": "counting"})
    with pytest.raises(ValueError, match="refers to include"):
        decomposed_questions({"include": [{"class": "cat", "position": ["above", 3]}]})
    with pytest.raises(ValueError, match="relation"):
        decomposed_questions({"include": [{"class": "dog"}, {"class": "cat", "position": ["near", 0]}]})
    with pytest.raises(ValueError, match="'count'"):
        decomposed_questions({"include": [{"class": "cat", "count": "two"}]})
    with pytest.raises(ValueError, match="question mode"):
        build_questions("p", {}, "everything")


def test_every_bundled_geneval_prompt_gets_questions():
    from pathlib import Path

    import milr

    path = Path(milr.__file__).parent / "data" / "geneval" / "evaluation_metadata.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kinds = set()
    for row in rows:
        qs = build_questions(row["prompt"], row, "decomposed")
        assert qs and all(q.text.endswith("Please answer yes or no.") for q in qs)
        kinds |= {q.kind for q in qs}
    assert kinds >= {"object", "count", "color", "position"}


# ---------------------------------------------------------------------------------------------
# self_judge
# ---------------------------------------------------------------------------------------------
class QuestionAwareMUG(ToyMUG):
    """A toy MUG whose understanding answer depends on the image and the question: an image's
    brightness b says "yes" to questions about cats with probability b, to anything else 1 - b."""

    def __init__(self):
        super().__init__()
        self.asked: list[tuple[float, str]] = []

    def yes_probability(self, images, questions):
        b = images.mean(dim=(1, 2, 3))
        self.asked += [(float(x), q) for x, q in zip(b, questions)]
        is_cat = torch.tensor(["cat" in q for q in questions])
        return torch.where(is_cat, b, 1 - b)


def test_self_judge_combines_decomposed_answers():
    mug = QuestionAwareMUG()
    meta = {"tag": "two_object", "include": [{"class": "cat"}, {"class": "dog"}]}
    images = brightness_images([0.9, 0.2])
    prod = SelfJudge(model=mug, combine="product").score(images, ["p", "p"], [meta, meta])
    assert torch.allclose(prod, torch.tensor([0.9 * 0.1, 0.2 * 0.8]))
    mean = SelfJudge(model=mug, combine="mean", batch_size=1).score(images, ["p", "p"], [meta, meta])
    assert torch.allclose(mean, torch.tensor([(0.9 + 0.1) / 2, (0.2 + 0.8) / 2]))
    # each image was asked about each object, with its own pixels
    assert [(round(b, 2), q.split("?")[0]) for b, q in mug.asked[:4]] == [
        (0.9, "Is there a cat in the image"), (0.9, "Is there a dog in the image"),
        (0.2, "Is there a cat in the image"), (0.2, "Is there a dog in the image")]


def test_self_judge_expected_no_and_order():
    mug = QuestionAwareMUG()
    judge = SelfJudge(model=mug, questions="decomposed")
    metas = [{"include": [{"class": "cat"}], "exclude": [{"class": "cat", "count": 2}]}, {"include": [{"class": "dog"}]},
             {"include": [{"class": "cat"}]}, {"include": [{"class": "cat"}, {"class": "dog"}]}]
    images = brightness_images([0.7, 0.4, 0.6, 0.3])
    scores = judge.score(images, ["a"] * 4, metas)
    # "two or more cats?" expects no: P(ok) = 1 - P(yes) = 1 - 0.7
    assert torch.allclose(scores, torch.tensor([0.7 * 0.3, 0.6, 0.6, 0.3 * 0.7]))
    perm = [2, 0, 3, 1]
    shuffled = judge.score(images[perm], ["a"] * 4, [metas[i] for i in perm])
    assert torch.allclose(shuffled, scores[perm])


def test_self_judge_is_built_with_the_runner_model():
    from milr.recipe import CriticSpec
    from milr.runner import build_critic

    mug = QuestionAwareMUG()
    critic = build_critic(CriticSpec(name="self_judge", combine="mean"), mug, "cpu")
    assert isinstance(critic, SelfJudge) and critic.model is mug
    with pytest.raises(ValueError, match="yes_probability"):
        SelfJudge(model=None)
    with pytest.raises(ValueError, match="combine"):
        SelfJudge(model=mug, combine="max")


# ---------------------------------------------------------------------------------------------
# vlm_judge (tiny random LLaVA saved with save_pretrained, loaded back by folder)
# ---------------------------------------------------------------------------------------------
WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "yes", "no", "user", "assistant", ":", "?", ".", "is", "are",
         "there", "a", "an", "the", "in", "image", "cat", "dog", "red", "please", "answer", "or", "does", "this",
         "figure", "show", "exactly", "two", "cats", "dogs", "tv", "on", "left", "of", "\"", "photo"]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    folder = tmp_path_factory.mktemp("tiny-llava")
    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                pad_token_id=0, bos_token_id=2, eos_token_id=3),
        image_token_id=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # a sharper next-token distribution than the tiny default init gives
        model.lm_head.weight.normal_(0, 1.0)
    chat = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
            "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
        chat_template=chat, num_additional_image_tokens=1,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vlm(tiny_llava):
    from milr.critics.vlm_judge import VLMJudge

    return VLMJudge(checkpoint=str(tiny_llava), batch_size=3)


def noise_images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def manual_p_yes(judge, image, question, normalize=True):
    """Independent computation: processor + full forward + softmax at the last position."""
    from milr.critics.vlm_judge import images_to_arrays

    text = judge.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=False)
    enc = judge.processor(text=[text], images=images_to_arrays(image[None]), return_tensors="pt")
    with torch.no_grad():
        probs = judge.model(**enc).logits[0, -1].softmax(-1)
    yes, no = probs[WORDS.index("yes")], probs[WORDS.index("no")]
    return float(yes / (yes + no)) if normalize else float(yes)


def test_vlm_judge_reads_p_yes_of_the_next_token(vlm):
    assert vlm.yes_ids == [WORDS.index("yes")] and vlm.no_ids == [WORDS.index("no")]
    images = noise_images(2)
    questions = ["Is there a cat in the image?", "Are there exactly two dogs?"]
    got = vlm.answer(images, questions)
    expected = torch.tensor([manual_p_yes(vlm, img, q) for img, q in zip(images, questions)])
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.min() > 0 and got.max() < 1


def test_vlm_judge_batches_keep_order(vlm):
    """Mixed question lengths and a batch size that splits groups; shuffling follows the images."""
    images = noise_images(5, seed=1)
    prompts = ["a cat", "a dog", "two cats", "a red cat", "a tv"]
    metas = [{"include": [{"class": "cat"}]}, {}, {"include": [{"class": "cat", "count": 2}]},
             {"include": [{"class": "cat", "color": "red"}]}, {"include": [{"class": "tv"}, {"class": "dog"}]}]
    scores = vlm.score(images, prompts, metas)
    singles = torch.cat([vlm.score(images[i : i + 1], prompts[i : i + 1], metas[i : i + 1]) for i in range(5)])
    assert torch.allclose(scores, singles, atol=1e-5)
    assert scores.std() > 1e-3, "degenerate test: images should score differently"
    perm = [4, 2, 0, 3, 1]
    shuffled = vlm.score(images[perm], [prompts[i] for i in perm], [metas[i] for i in perm])
    assert torch.allclose(shuffled, scores[perm], atol=1e-5)


def test_vlm_judge_combines_decomposed_questions(tiny_llava, vlm):
    from milr.critics.vlm_judge import VLMJudge

    images = noise_images(1, seed=2)
    meta = {"tag": "color_attr", "include": [{"class": "cat", "color": "red"}, {"class": "dog"}]}
    texts = [q.text for q in build_questions("p", meta)]
    per_q = vlm.answer(images.expand(len(texts), -1, -1, -1), texts)
    assert torch.allclose(vlm.score(images, ["p"], [meta]), per_q.prod().unsqueeze(0), atol=1e-6)
    mean_judge = VLMJudge(checkpoint=str(tiny_llava), combine="mean", normalize=False)
    raw = torch.tensor([manual_p_yes(mean_judge, images[0], t, normalize=False) for t in texts])
    assert torch.allclose(mean_judge.score(images, ["p"], [meta]), raw.mean().unsqueeze(0), atol=1e-5)
    assert mean_judge.identity() != vlm.identity()


def test_vlm_judge_prompt_format_without_chat_template(tiny_llava):
    from milr.critics.vlm_judge import VLMJudge

    judge = VLMJudge(checkpoint=str(tiny_llava), use_chat_template=False, prompt_format="user : {image} {question} assistant :")
    assert judge.format_question("is there a cat ?") == "user : <image> is there a cat ? assistant :"
    p = judge.answer(noise_images(1, seed=3), ["is there a cat ?"])
    assert p.shape == (1,) and 0 < float(p) < 1


def test_vlm_judge_offline_errors(tmp_path):
    from milr.critics.vlm_judge import VLMJudge

    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="huggingface-cli download someone/not-a-cached-vlm"):
        VLMJudge(checkpoint="someone/not-a-cached-vlm")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VLMJudge(checkpoint=str(tmp_path))
    assert time.perf_counter() - t0 < 2.0
    assert CRITICS.get("vlm_judge") is VLMJudge


# ---------------------------------------------------------------------------------------------
# api_judge against a local fake OpenAI-compatible server
# ---------------------------------------------------------------------------------------------
MAX_FAKE_REQUESTS = 60


def decode_brightness(data_url: str) -> float:
    from PIL import Image

    assert data_url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert img.format == "PNG"
    return float(np.asarray(img.convert("L"), dtype=np.float64).mean() / 255.0)


class FakeChatHandler(BaseHTTPRequestHandler):
    """Answers with P(yes) = the image's brightness (as top_logprobs), following ``server.script``."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            n = len(srv.requests)
            action = srv.script.pop(0) if srv.script else srv.default
        if n > MAX_FAKE_REQUESTS:
            action = "500"
        if action == "500":
            return self._send(500, {"error": {"message": "server exploded"}})
        if action == "400":
            return self._send(400, {"error": {"message": "bad request: unknown model"}})
        if action == "sleep":
            time.sleep(5.0)
        content = body["messages"][-1]["content"]
        b = decode_brightness(next(c for c in content if c["type"] == "image_url")["image_url"]["url"])
        b = min(max(b, 1e-6), 1 - 1e-6)
        answer = "Yes" if b > 0.5 else "No"
        choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length"}
        if action != "text" and body.get("logprobs"):
            top = [{"token": "Yes", "logprob": math.log(b)}, {"token": "No", "logprob": math.log(1 - b)},
                   {"token": "Maybe", "logprob": -20.0}]
            choice["logprobs"] = {"content": [{"token": answer, "logprob": top[0 if b > 0.5 else 1]["logprob"],
                                               "top_logprobs": top[: body.get("top_logprobs", 1)]}]}
        self._send(200, {"id": "x", "object": "chat.completion", "choices": [choice],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture
def fake_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatHandler)
    srv.daemon_threads = True
    srv.requests, srv.script, srv.default, srv.lock = [], [], "ok", threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()
    assert len(srv.requests) <= MAX_FAKE_REQUESTS


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("MILR_TEST_KEY", "sk-test-123")


def api_judge(server, **kw):
    kw.setdefault("api_key_env", "MILR_TEST_KEY")
    kw.setdefault("backoff_s", 0.01)
    return APIJudge(base_url=server.base_url, model_name="fake-vlm", **kw)


def test_api_judge_reads_logprobs_in_order(fake_server):
    judge = api_judge(fake_server, questions="prompt", max_workers=3)
    values = [0.8, 0.3, 0.6, 0.1, 0.95]
    images = brightness_images(values)
    scores = judge.score(images, [f"p{i}" for i in range(5)], [{}] * 5)
    assert torch.allclose(scores, torch.tensor(values), atol=0.01)  # 8-bit PNG rounding
    perm = [3, 0, 4, 2, 1]
    assert torch.allclose(judge.score(images[perm], ["p"] * 5, [{}] * 5), scores[perm], atol=1e-6)
    req = fake_server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-123"
    body = req["body"]
    assert body["model"] == "fake-vlm" and body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["messages"][-1]["content"][0]["text"].startswith('Does this figure show "p')
    assert judge.calls == 10 and judge.input_tokens == 1000


def test_api_judge_decomposed_questions_product(fake_server):
    judge = api_judge(fake_server, max_workers=1)
    meta = {"tag": "two_object", "include": [{"class": "cat"}, {"class": "dog"}]}
    scores = judge.score(brightness_images([0.8]), ["a cat and a dog"], [meta])
    assert torch.allclose(scores, torch.tensor([0.8 * 0.8]), atol=0.01)
    asked = [r["body"]["messages"][-1]["content"][0]["text"] for r in fake_server.requests]
    assert asked[0].startswith("Is there a cat") and asked[1].startswith("Is there a dog")


def test_api_judge_parses_text_without_logprobs(fake_server):
    fake_server.default = "text"
    judge = api_judge(fake_server, questions="prompt", max_workers=1)
    with pytest.warns(UserWarning, match="parsed from text"):
        scores = judge.score(brightness_images([0.9, 0.2]), ["a", "b"], [{}, {}])
    assert scores.tolist() == [1.0, 0.0] and judge.answers_from_text == 2
    with pytest.raises(APIJudgeError, match="yes/no answer"):
        p_yes_from_response({"choices": [{"message": {"content": "Perhaps."}}]})


def test_api_judge_retries_after_500(fake_server):
    fake_server.script = ["500", "500"]
    judge = api_judge(fake_server, questions="prompt", max_retries=2, max_workers=1)
    assert torch.allclose(judge.score(brightness_images([0.7]), ["a"], [{}]), torch.tensor([0.7]), atol=0.01)
    assert len(fake_server.requests) == 3
    fake_server.script = ["500", "500"]
    strict = api_judge(fake_server, questions="prompt", max_retries=1, max_workers=1)
    with pytest.raises(APIJudgeError, match="failed after 2 attempts; last error HTTP 500"):
        strict.score(brightness_images([0.7]), ["a"], [{}])


def test_api_judge_client_errors_are_not_retried(fake_server):
    fake_server.script = ["400"]
    judge = api_judge(fake_server, questions="prompt", max_retries=3, max_workers=1)
    with pytest.raises(APIJudgeError, match="HTTP 400.*unknown model"):
        judge.score(brightness_images([0.7]), ["a"], [{}])
    assert len(fake_server.requests) == 1


def test_api_judge_timeout_then_retry(fake_server):
    fake_server.script = ["sleep"]
    judge = api_judge(fake_server, questions="prompt", timeout_s=0.2, max_retries=1, max_workers=1)
    t0 = time.perf_counter()
    scores = judge.score(brightness_images([0.4]), ["a"], [{}])
    assert time.perf_counter() - t0 < 3.0  # gave up on the slow answer (5 s) instead of waiting for it
    assert torch.allclose(scores, torch.tensor([0.4]), atol=0.01) and len(fake_server.requests) == 2
    fake_server.script = ["sleep"]
    no_retry = api_judge(fake_server, questions="prompt", timeout_s=0.2, max_retries=0, max_workers=1)
    with pytest.raises(APIJudgeError, match="(?i)timed? ?out"):
        no_retry.score(brightness_images([0.4]), ["a"], [{}])


def test_api_judge_cost_caps(fake_server):
    images, prompts, metas = brightness_images([0.6, 0.6, 0.6]), ["a"] * 3, [{}] * 3
    capped = api_judge(fake_server, questions="prompt", max_calls=2, max_workers=1)
    with pytest.raises(APIBudgetExceeded, match="max_calls=2"):
        capped.score(images, prompts, metas)
    assert len(fake_server.requests) == 2 and capped.calls == 2
    priced = api_judge(fake_server, questions="prompt", max_cost_usd=0.025, price_per_call_usd=0.01, max_workers=1)
    with pytest.raises(APIBudgetExceeded, match="max_cost_usd=0.025"):
        priced.score(images, prompts, metas)
    assert priced.calls == 2 and priced.spent_usd == pytest.approx(0.02)
    tokens = api_judge(fake_server, questions="prompt", max_cost_usd=1.0, price_per_input_token_usd=1e-3,
                       price_per_output_token_usd=2e-3, max_workers=1)
    tokens.score(images[:2], prompts[:2], metas[:2])
    assert tokens.spent_usd == pytest.approx(2 * (100 * 1e-3 + 1 * 2e-3))
    assert len(fake_server.requests) == 2 + 2 + 2  # the capped calls were never sent


def test_api_judge_configuration_errors(monkeypatch, fake_server):
    monkeypatch.delenv("MILR_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="MILR_MISSING_KEY is not set"):
        APIJudge(base_url=fake_server.base_url, model_name="m", api_key_env="MILR_MISSING_KEY")
    with pytest.raises(ValueError, match="http"):
        APIJudge(base_url="127.0.0.1:8000", model_name="m", api_key_env=None)
    open_judge = APIJudge(base_url=fake_server.base_url, model_name="m", api_key_env=None, questions="prompt")
    open_judge.score(brightness_images([0.5]), ["a"], [{}])
    assert fake_server.requests[-1]["auth"] is None
    assert "sk-test" not in api_judge(fake_server).identity()
