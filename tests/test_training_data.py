"""Critic-training data (milr/training/data.py): every format trains a smoke critic used from a recipe,
ranked lists, ties and margins, errors naming row and column, and a validation split that does not leak."""

import csv
import json

import pytest
import torch

from milr.training.critic import train_critic
from milr.training.data import DataError, groups, leak_report, split_rows
from milr.world.data import write_pairwise, write_pointwise

TINY_MODEL = {"width": 4, "depth": 3, "text_dim": 8, "head_hidden": 16, "max_words": 16, "stem": "patch"}
TINY_TRAIN = {"epochs": 1, "batch_size": 8, "logger": "none"}


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return write_pairwise(root, 24, "train", seed=11)


def _to_csv(rows, path, cols):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r[c] for c in cols})
    return path


def _make(fmt, pairs, tmp_path):
    """The same 24 world pairs in format ``fmt``; returns the data.train reference and extra data keys."""
    from PIL import Image

    rows = _rows(pairs)
    root = pairs.parent
    for i, r in enumerate(rows):
        r["margin"] = 0.5 * (i % 3)
    if fmt == "jsonl":
        (root / "margins.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        return str(root / "margins.jsonl"), {}
    if fmt == "csv":
        return str(_to_csv(rows, root / "pairs.csv", ["prompt", "chosen", "rejected", "margin"])), {}
    if fmt == "parquet":  # images embedded as bytes, the way datasets exports image columns
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [r[k] for r in rows] for k in ("prompt", "margin")}
        for k in ("chosen", "rejected"):
            cols[k] = [{"bytes": (root / r[k]).read_bytes(), "path": None} for r in rows]
        pq.write_table(pa.table(cols), str(tmp_path / "pairs.parquet"))
        return str(tmp_path / "pairs.parquet"), {}
    if fmt == "folder":  # imagefolder: images next to metadata.csv, TRL-style column names mapped
        folder = tmp_path / "folder"
        (folder / "img").mkdir(parents=True)
        for r in rows:
            for k in ("chosen", "rejected"):
                name = "img/" + r[k].split("/")[-1]
                Image.open(root / r[k]).save(folder / name)
                r[k] = name
        for r in rows:
            r["image_0"], r["image_1"] = r.pop("chosen"), r.pop("rejected")
        _to_csv(rows, folder / "metadata.csv", ["prompt", "image_0", "image_1", "margin"])
        return str(folder), {"columns": {"chosen": "image_0", "rejected": "image_1"}}
    if fmt == "hf":  # a DatasetDict saved with save_to_disk, decoded images in Image columns
        datasets = pytest.importorskip("datasets")

        def ds(rs):
            d = {"prompt": [r["prompt"] for r in rs], "margin": [r["margin"] for r in rs]}
            for k in ("chosen", "rejected"):
                d[k] = [Image.open(root / r[k]).convert("RGB") for r in rs]
            return datasets.Dataset.from_dict(d).cast_column("chosen", datasets.Image()).cast_column("rejected", datasets.Image())

        datasets.DatasetDict({"train": ds(rows[:20]), "test": ds(rows[20:])}).save_to_disk(str(tmp_path / "hf"))
        return str(tmp_path / "hf"), {"test": str(tmp_path / "hf")}
    if fmt == "ranked":  # ImageReward-style: one prompt, several images best first
        ranked = [{"prompt": r["prompt"], "images": [r["chosen"], r["rejected"], rows[(i + 12) % len(rows)]["chosen"]],
                   "ranks": [1, 2, 2]} for i, r in enumerate(rows)]
        path = root / "ranked.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in ranked))
        return str(path), {}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "folder", "hf", "ranked"])
def test_each_format_trains_a_critic_used_from_a_recipe(fmt, pairs, tmp_path):
    from doubles import run_with_trained_critic

    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    train, extra = _make(fmt, pairs, tmp_path)
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "ckpt"), "data": {"train": train, **extra},
                        "model": TINY_MODEL, "train": TINY_TRAIN})
    info = json.loads((out / "critic.json").read_text())
    summary = info["card"]["extra"]["training_data"]
    n_pairs = {"ranked": 48, "hf": 20}.get(fmt, 24)  # ranks [1, 2, 2]: 2 pairs a row; the tie is not compared
    assert summary["train_examples"] + summary["val_examples"] == n_pairs
    if fmt != "ranked":
        assert summary["with_margin"] == summary["train_examples"]  # every row carries its margin
    if fmt == "hf":
        assert info["card"]["extra"]["test"]["n_pairs"] == 4  # the DatasetDict's test split, kept checkpoint
    res = run_with_trained_critic(out, tmp_path, "a photo of a red circle")
    assert res["final"]["scores"]["trained"] == pytest.approx(res["final"]["reward"])


def test_pointwise_csv_and_image_folder(tmp_path):
    data = write_pointwise(tmp_path / "pw", 20, "train", seed=3)
    rows = _rows(data)
    _to_csv(rows, tmp_path / "pw" / "scores.csv", ["prompt", "image", "score"])
    out = train_critic({"task": "pointwise", "output": str(tmp_path / "a"), "data": {"train": str(tmp_path / "pw" / "scores.csv")},
                        "model": TINY_MODEL, "train": TINY_TRAIN})
    assert json.loads((out / "critic.json").read_text())["loss"] == "mse"
    for r in rows:
        r["file_name"] = r.pop("image")
    (tmp_path / "pw" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = train_critic({"task": "pointwise", "output": str(tmp_path / "b"), "data": {"train": str(tmp_path / "pw")},
                        "model": TINY_MODEL, "train": TINY_TRAIN})
    assert json.loads((out / "critic.json").read_text())["loss"] == "bce"  # labels first, as for JSONL


def test_ties_and_margins_enter_the_loss():
    from milr.training.module import BradleyTerryLoss

    class Fixed(torch.nn.Module):  # reward = mean pixel: chosen 0.75, rejected 0.25 -> difference 0.5
        def forward(self, x, tokens):
            return x.mean(dim=(1, 2, 3))

    batch = {"chosen": torch.full((2, 3, 4, 4), 0.75), "rejected": torch.full((2, 3, 4, 4), 0.25),
             "margin": torch.tensor([0.0, 1.0]), "tie": torch.tensor([False, False])}
    loss, diff, target = BradleyTerryLoss()(Fixed(), batch, torch.zeros(2, 1))
    expect = -(torch.nn.functional.logsigmoid(torch.tensor(0.5)) + torch.nn.functional.logsigmoid(torch.tensor(-0.5))) / 2
    torch.testing.assert_close(loss, expect)  # the margin 1 turns the second pair's 0.5 into -0.5
    batch["tie"] = torch.tensor([True, True])
    batch["margin"] = torch.zeros(2)
    loss, _, target = BradleyTerryLoss()(Fixed(), batch, torch.zeros(2, 1))
    assert target.tolist() == [0.5, 0.5]
    # A tie's loss is minimal at equal rewards: -log s(0) = ln 2 at zero difference, more at 0.5.
    assert float(loss) > 0.6931 and BradleyTerryLoss.metrics(diff, target) == {}


@pytest.mark.parametrize("cell,col,msg", [
    ({"margin": "ten"}, "margin", "column 'margin' must be a finite number, got 'ten'"),
    ({"margin": "-1"}, "margin", "column 'margin' must be >= 0"),
    ({"tie": "maybe"}, "tie", "column 'tie' must be true/false"),
    ({"chosen": ""}, "chosen", "missing fields|empty image path"),
])
def test_bad_cells_name_the_row_and_column(cell, col, msg, pairs, tmp_path):
    rows = _rows(pairs)[:4]
    for r in rows:
        r["margin"], r["tie"] = "0", "false"
    rows[2].update(cell)
    if cell.get("chosen") == "":
        rows[2]["chosen"] = None
    path = _to_csv(rows, pairs.parent / f"bad-{col}.csv", ["prompt", "chosen", "rejected", "margin", "tie"])
    with pytest.raises(DataError, match=rf"bad-{col}.csv:4: .*({msg})"):  # row 4 of the file (header is row 1)
        train_critic({"task": "pairwise", "output": str(tmp_path / "o"), "data": {"train": str(path)},
                      "model": TINY_MODEL, "train": TINY_TRAIN})


def test_ranked_list_errors_name_the_row(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "images": ["a.png", "b.png"], "ranks": [1]}) + "\n")
    with pytest.raises(DataError, match=r"r.jsonl:1: column 'images' needs at least 2 images and 'ranks' one rank per image"):
        train_critic({"task": "pairwise", "output": str(tmp_path / "o"), "data": {"train": str(bad)}})


def test_grouped_split_keeps_prompts_and_images_on_one_side():
    # 10 prompts x 4 pairs; each prompt's pairs share a reference image, and prompts 0-1 share one
    # more image, so they form one group: a row split puts the same prompts on both sides.
    rows = []
    for p in range(10):
        for k in range(4):
            rows.append({"prompt": f"prompt {p}", "chosen": f"ref{p}.png", "rejected": f"p{p}_{k}.png"})
    rows[0]["rejected"] = "shared.png"
    rows[4]["rejected"] = "shared.png"
    comps = groups(rows)
    assert sorted(len(c) for c in comps) == [4] * 8 + [8]
    naive_train, naive_val, naive = split_rows(rows, 0.2, seed=0, how="random")
    assert naive["val_sharing_prompt"] > 0 and naive["val_sharing_image"] > 0  # the leak a row split has
    train, val, info = split_rows(rows, 0.2, seed=0, how="grouped")
    assert len(val) == 8 and len(train) == 32
    assert info["val_sharing_prompt"] == 0 and info["val_sharing_image"] == 0
    assert not {r["prompt"] for r in val} & {r["prompt"] for r in train}
    assert leak_report(train, val) == {"val_sharing_prompt": 0, "val_sharing_image": 0}
    one = [{"prompt": "same", "chosen": f"{i}a.png", "rejected": f"{i}b.png"} for i in range(5)]
    with pytest.raises(DataError, match="every example shares a prompt"):
        split_rows(one, 0.2, seed=0)


def test_training_reports_the_grouped_split_in_the_card(tmp_path):
    data = write_pairwise(tmp_path / "d", 24, "train", tags=["single_object"], seed=5)  # 5 prompts: groups of several pairs
    rows = _rows(data)
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "g"), "data": {"train": str(data), "val_fraction": 0.25},
                        "model": TINY_MODEL, "train": TINY_TRAIN})
    split = json.loads((out / "critic.json").read_text())["card"]["extra"]["training_data"]["split"]
    assert split["how"].startswith("grouped") and split["val_sharing_prompt"] == 0
    assert split["groups"] == len({r["prompt"] for r in rows})


def test_held_out_test_file_scored_with_the_kept_checkpoint(tmp_path):
    import milr
    from milr.training.reward import pairwise_accuracy

    train = write_pairwise(tmp_path / "d", 24, "train", seed=6)
    test = write_pairwise(tmp_path / "d", 12, "test", seed=7, file_name="test.jsonl")  # TEST-split prompts
    out = train_critic({"task": "pairwise", "output": str(tmp_path / "t"), "data": {"train": str(train), "test": str(test)},
                        "model": TINY_MODEL, "train": dict(TINY_TRAIN, epochs=2)})
    extra = json.loads((out / "critic.json").read_text())["card"]["extra"]
    assert extra["test"]["n_pairs"] == 12 and extra["test"]["checkpoint"].startswith("kept")
    # The same figure from the saved critic, the way any critic (a shipped one too) is measured on a file.
    again = pairwise_accuracy(milr.create_critic(str(out)), str(test))
    assert again["n_pairs"] == 12 and again["accuracy"] == pytest.approx(extra["test"]["pairwise_accuracy"])
    assert set(again["by_tag"]) <= {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    # The calibration an ensemble can normalise with: mean/std of the critic's scores on validation.
    assert set(extra["zscore"]) >= {"mean", "std"} and extra["zscore"]["std"] > 0
    assert extra["zscore"]["mean"] == pytest.approx(extra["calibration"]["all"]["mean"])
