"""``wise_judge``: WISE's parse and WiScore worked out by hand from docs/benchmarks.md section 2, and
the protocol against a local fake OpenAI-compatible server."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_judges import FakeChatHandler, decode_brightness, fake_server  # noqa: F401 (fixture)

from milr.critics.wise_judge import parse_scores, wise_overall, wiscore
from milr.registry import CRITICS


@pytest.mark.parametrize("text, expected", [
    ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
    ("**Consistency**: 1\n**Realism:** 2\n**Aesthetic Quality** 1", (1, 2, 1)),  # markdown, optional colon
    ("consistency:0 realism:0 AESTHETIC QUALITY:2", (0, 0, 2)),  # any case, one line
    ("Sure.\nConsistency: 1\nRealism: 1\nAesthetic Quality: 1\nConsistency: 2", (1, 1, 1)),  # first mention counts
    ("1\n2\n0", (1, 2, 0)),  # fallback: three bare lines
    ("Scores below\n 2 \n**1**\n0\n1", (2, 1, 0)),  # the first three bare lines
])
def test_parse_well_formed(text, expected):
    assert parse_scores(text) == expected


@pytest.mark.parametrize("text", [
    "Consistency: 3\nRealism: 1\nAesthetic Quality: 1",  # out of the 0-2 range
    "Consistency: 1.5\nRealism: 1\nAesthetic Quality: 1",  # not an integer score
    "Consistency: -1\nRealism: 1\nAesthetic Quality: 1",
    "Consistency: 2\nRealism: 1",  # a criterion missing, no bare lines
    "I cannot judge this image.",
    "1\n2",  # two bare lines only
    "",
])
def test_parse_malformed_or_out_of_range_is_none(text):
    assert parse_scores(text) is None


def test_wiscore_and_overall_by_hand():
    assert wiscore(2, 2, 2) == pytest.approx(1.0)
    assert wiscore(0, 0, 0) == 0.0
    assert wiscore(2, 1, 0) == pytest.approx((1.4 + 0.2) / 2)  # 0.8
    assert wiscore(1, 0, 2) == pytest.approx((0.7 + 0.2) / 2)  # 0.45
    cats = {"culture": 0.5, "TIME": 0.25, "Space": 1.0, "biology": 0.0, "physics": 0.5, "chemistry": 1.0}
    assert wise_overall(cats) == pytest.approx(0.4 * 0.5 + 0.167 * 0.25 + 0.133 * 1.0 + 0.1 * 0.0 + 0.1 * 0.5 + 0.1 * 1.0)
    with pytest.raises(ValueError, match="missing"):
        wise_overall({"CULTURE": 0.5})


# ---------------------------------------------------------------------------------------------
# Protocol against a fake server
# ---------------------------------------------------------------------------------------------
class FakeWiseHandler(FakeChatHandler):
    """Answers from ``server.script`` (text per call), else scores read from the image's brightness."""

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append(body)
            answer = srv.script.pop(0) if srv.script else None
        if answer is None:
            content = body["messages"][-1]["content"]
            b = decode_brightness(next(c for c in content if c["type"] == "image_url")["image_url"]["url"])
            level = 2 if b > 0.75 else 1 if b > 0.25 else 0
            answer = f"Consistency: {level}\nRealism: {2 - level}\nAesthetic Quality: 1"
        self._send(200, {"id": "x", "object": "chat.completion", "usage": {"prompt_tokens": 900, "completion_tokens": 20},
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})


@pytest.fixture
def wise_server(fake_server):
    """test_judges' local server, answering as a WISE judge."""
    fake_server.RequestHandlerClass = FakeWiseHandler
    return fake_server


def judge(srv, **kw):
    return CRITICS.get("wise_judge")(base_url=srv.base_url, api_key_env=None, backoff_s=0.0, **kw)


MD = {"explanation": "Mooncakes, eaten at the Mid-Autumn Festival", "category": "CULTURE", "prompt_id": 1}


def test_wise_request_layout_and_scores(wise_server):
    critic = judge(wise_server, max_workers=3)
    images = torch.stack([torch.full((3, 16, 16), v) for v in (0.9, 0.5, 0.1)])
    s = critic.score(images, ["Traditional food of the Mid-Autumn Festival"] * 3, [MD] * 3)
    # brightness levels 2, 1, 0 -> (C, R, A) = (2, 0, 1), (1, 1, 1), (0, 2, 1)
    assert s.tolist() == pytest.approx([(1.4 + 0.1) / 2, (0.7 + 0.2 + 0.1) / 2, (0.4 + 0.1) / 2])
    assert critic.last_scores == [(2, 0, 1), (1, 1, 1), (0, 2, 1)]
    body = wise_server.requests[0]
    assert body["model"] == "gpt-4o-2024-05-13" and body["temperature"] == 0 and body["max_tokens"] == 2000
    assert "logprobs" not in body
    system, user = body["messages"]
    assert system["role"] == "system" and "\n" not in system["content"]
    text, image = user["content"]
    assert text["type"] == "text" and image["type"] == "image_url"  # the protocol text, then the image
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert "ruthless" in text["text"] and "0 = Rejected, 1 = Conditional, 2 = Exemplary" in text["text"]
    assert "Consistency: x\nRealism: y\nAesthetic Quality: z" in text["text"]
    assert text["text"].rstrip().endswith('PROMPT: "Traditional food of the Mid-Autumn Festival"')
    assert "Mooncakes" not in text["text"] and "EXPLANATION" not in text["text"]  # not privileged by default
    assert critic.privileged_fields == ()


def test_wise_explanation_only_when_asked(wise_server):
    critic = judge(wise_server, use_explanation=True, max_workers=1)
    assert critic.privileged_fields == ("explanation",)
    critic.score(torch.full((1, 3, 8, 8), 0.5), ["Traditional food of the Mid-Autumn Festival"], [MD])
    text = wise_server.requests[-1]["messages"][1]["content"][0]["text"]
    assert text.rstrip().endswith('PROMPT: "Traditional food of the Mid-Autumn Festival"\n'
                                  'EXPLANATION: "Mooncakes, eaten at the Mid-Autumn Festival"')
    assert judge(wise_server).identity() != critic.identity()
    with pytest.raises(ValueError, match="no 'explanation'"):
        critic.score(torch.full((1, 3, 8, 8), 0.5), ["p"], [{"category": "CULTURE"}])


def test_wise_reasks_unparsed_answers_then_drops(wise_server):
    wise_server.script = ["I think it is fine.", "Consistency: 2\nRealism: 2\nAesthetic Quality: 2"]
    critic = judge(wise_server, max_workers=1)
    assert critic.score(torch.zeros(1, 3, 8, 8), ["p"]).tolist() == [1.0]  # second call parsed
    assert len(wise_server.requests) == 2
    wise_server.script = ["nothing"] * 3 + ["Consistency: 3\nRealism: 1\nAesthetic Quality: 1"] * 3
    s = critic.score(torch.zeros(2, 3, 8, 8), ["p", "q"])
    assert len(wise_server.requests) == 2 + 6  # three tries per image (WISE's retry count)
    assert math.isnan(s[0]) and math.isnan(s[1]) and critic.last_scores == [None, None]
    wise_server.script = ["garbage"]
    zero = judge(wise_server, max_workers=1, unparsed="zero", parse_attempts=1)
    assert zero.score(torch.zeros(1, 3, 8, 8), ["p"]).tolist() == [0.0]


def test_wise_bad_arguments(wise_server, monkeypatch):
    with pytest.raises(ValueError, match="unparsed"):
        judge(wise_server, unparsed="skip")
    with pytest.raises(ValueError, match="parse_attempts"):
        judge(wise_server, parse_attempts=0)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY is not set"):
        CRITICS.get("wise_judge").preflight({})  # before anything loads
    CRITICS.get("wise_judge").preflight({"api_key_env": None})
    with pytest.raises(ValueError, match="OPENAI_API_KEY is not set"):
        CRITICS.get("wise_judge")(base_url=wise_server.base_url)


def test_wise_card_declares_the_privileged_argument():
    card = CRITICS.card("wise_judge")
    assert card.extra["privileged_args"] == {"use_explanation": "explanation"}
    assert card.cost == "api" and card.score_range == (0.0, 1.0)
