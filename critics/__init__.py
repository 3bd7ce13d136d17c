"""Critics (rewards): the index of built-in critics and their cards.

Each critic lives in its own file in this folder and registers itself with
``@CRITICS.register(name)``; this index declares it lazily so ``milr list critics`` shows the
cards without importing torch or the critic's dependencies. Rewards follow one convention:
higher is better, and the card states the range.
"""

from milr.cards import CriticCard
from milr.registry import CRITICS

CRITICS.register_lazy(
    "world_oracle",
    "milr.critics.world_oracle:WorldOracle",
    card=CriticCard(
        summary="Exact scorer of MiniMUG's scene world: classical detector + GenEval rules (the 'oracle' critic)",
        score_range=(0.0, 1.0),
        needs_metadata=("include",),
        input_size=32,
        cost="cheap",
        weights="none (geometry and colour rules)",
        reference="GenEval rules, Ghosh et al. 2023 (arXiv 2310.11513)",
    ),
)
CRITICS.register_lazy(
    "clip_score",
    "milr.critics.clip_score:CLIPScore",
    card=CriticCard(
        summary="CLIP image-text cosine similarity (open_clip; any architecture, pretrained tag or local checkpoint)",
        score_range=(-1.0, 1.0),
        differentiable=True,
        input_size=224,
        max_text_tokens=77,
        cost="cheap",
        weights="open_clip pretrained tag, local .pt/.safetensors, or local model config",
        reference="Hessel et al. 2021 CLIPScore (arXiv 2104.08718); open_clip",
    ),
)
CRITICS.register_lazy(
    "detector",
    "milr.critics.detector:DetectorCritic",
    card=CriticCard(
        summary="Object detector (ultralytics YOLO .pt) + CLIP colour classifier + GenEval rules; pass/fail or dense partial score",
        score_range=(0.0, 1.0),
        needs_metadata=("include",),
        cost="moderate",
        weights="a local YOLO .pt (COCO or trained on your data); CLIP for colours",
        reference="GenEval, Ghosh et al. 2023; ultralytics YOLO",
    ),
)
CRITICS.register_lazy(
    "image_reward",
    "milr.critics.image_reward:ImageRewardCritic",
    card=CriticCard(
        summary="ImageReward-v1.0 (BLIP + MLP) human-preference reward",
        score_range=(-float("inf"), float("inf")),
        differentiable=True,
        input_size=224,
        max_text_tokens=35,
        cost="moderate",
        weights="ImageReward.pt from a local path (or hub name when cached)",
        reference="Xu et al. 2023 ImageReward (arXiv 2304.05977)",
    ),
)
CRITICS.register_lazy(
    "vlm_judge",
    "milr.critics.vlm_judge:VLMJudge",
    card=CriticCard(
        summary="VQAScore-style judge: P('Yes') from any transformers image-text-to-text model, decomposed GenEval questions",
        score_range=(0.0, 1.0),
        cost="expensive",
        weights="any transformers image-text-to-text checkpoint (hub name or local folder)",
        reference="Lin et al. 2024 VQAScore (arXiv 2404.01291)",
    ),
)
CRITICS.register_lazy(
    "self_judge",
    "milr.critics.self_judge:SelfJudge",
    card=CriticCard(
        summary="The MUG model under optimisation judges its own image (MILR's SelfReward), reusing its weights",
        score_range=(0.0, 1.0),
        cost="cheap",
        weights="the loaded MUG model",
        reference="MILR SelfReward (arXiv 2509.22761)",
    ),
)
CRITICS.register_lazy(
    "api_judge",
    "milr.critics.api_judge:APIJudge",
    card=CriticCard(
        summary="OpenAI-compatible chat endpoint as a yes/no judge, with timeouts, retries and a cost cap",
        score_range=(0.0, 1.0),
        cost="api",
        weights="remote; key from the environment",
        reference="OpenAI chat completions API",
    ),
)
CRITICS.register_lazy(
    "ensemble",
    "milr.critics.ensemble:Ensemble",
    card=CriticCard(
        summary="Weighted sum / min / product of critics with per-critic normalisation, tag gating and cascades",
        score_range=(-float("inf"), float("inf")),
        cost="sum of members",
        reference="MILR MixedReward (arXiv 2509.22761)",
    ),
)
