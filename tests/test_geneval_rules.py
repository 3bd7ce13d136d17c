"""GenEval's per-image rules (docs/benchmarks.md section 1), checked on hand-made detections.

Expected values are worked out by hand from the written rules, not read off the implementation.
"""

import pytest

from milr.geneval import Detection, evaluate, geneval_summary, relative_offset, relpos


def det(cls, box, score=1.0, color=None):
    return Detection(cls=cls, box=box, score=score, color=color)


def counting_md(cls, n):
    return {
        "tag": "counting",
        "include": [{"class": cls, "count": n}],
        "exclude": [{"class": cls, "count": n + 1}],
        "prompt": f"a photo of {n} {cls}s",
    }


def row(n, score=0.95, cls="clock"):
    """n well-separated boxes in a row."""
    return [det(cls, (20 * i, 0, 20 * i + 10, 10), score) for i in range(n)]


# ------------------------------------------------------------------------------------------
# relpos
# ------------------------------------------------------------------------------------------
def test_relpos_four_relations_y_down():
    a = (0, 0, 10, 10)
    right = (20, 0, 30, 10)  # offset x -20, shrink 2 -> dx = -18/20 = -0.9
    below = (0, 20, 10, 30)
    assert relpos(a, right) == {"left of"}
    assert relpos(right, a) == {"right of"}
    assert relpos(a, below) == {"above"}  # smaller y is higher: y points down
    assert relpos(below, a) == {"below"}


def test_relpos_diagonal_gives_two_relations():
    # offset (-20, -20), shrunk to (-18, -18), divided by |(-20,-20)| = 28.28 -> -0.636 each
    assert relpos((0, 0, 10, 10), (20, 20, 30, 30)) == {"left of", "above"}
    assert relpos((20, 20, 30, 30), (0, 0, 10, 10)) == {"right of", "below"}


def test_shrink_turns_mostly_vertical_pair_away_from_left_of():
    # Wide boxes. Centres (15, 5) and (29, 25): offset (-14, -20), norm 24.41.
    # Unshrunk dx = -0.57 would be "left of"; shrink x = 0.1*(30+30) = 6 -> -8/24.41 = -0.33.
    # dy: shrink 0.1*(10+10) = 2 -> -18/24.41 = -0.74 -> "above".
    a, b = (0, 0, 30, 10), (14, 20, 44, 30)
    assert relpos(a, b) == {"above"}
    dx, dy = relative_offset(a, b)
    assert dx == pytest.approx(-8 / (14**2 + 20**2) ** 0.5)
    assert dy == pytest.approx(-18 / (14**2 + 20**2) ** 0.5)


def test_division_is_by_the_original_offset_norm():
    # A (0,0,20,40) centre (10,20); B (10.5,8,25.5,48) centre (18,28): offset (-8,-8), norm 11.31.
    # shrink x = 0.1*(20+15) = 3.5 -> rev x = -4.5; shrink y = 0.1*(40+40) = 8 -> rev y = 0.
    # dx = -4.5/11.31 = -0.40: no relation. (Dividing by the shrunk norm would give -1.0, "left of".)
    a, b = (0, 0, 20, 40), (10.5, 8, 25.5, 48)
    assert relative_offset(a, b) == pytest.approx((-4.5 / 128**0.5, 0.0))
    assert relpos(a, b) == set()


def test_relpos_no_relation_below_1e3():
    assert relpos((0, 0, 10, 10), (0, 0, 10, 10)) == set()
    assert relative_offset((0, 0, 10, 10), (0, 0, 10, 10)) is None
    # offset (-1, -1) is fully absorbed by the shrink of 2 per axis
    assert relative_offset((0, 0, 10, 10), (1, 1, 11, 11)) is None


# ------------------------------------------------------------------------------------------
# thresholds, counting, exclude
# ------------------------------------------------------------------------------------------
SINGLE = {"tag": "single_object", "include": [{"class": "cup", "count": 1}], "prompt": "a photo of a cup"}


def test_score_threshold_is_strict_0_3():
    assert not evaluate(SINGLE, [det("cup", (0, 0, 10, 10), 0.3)]).correct
    assert evaluate(SINGLE, [det("cup", (0, 0, 10, 10), 0.3001)]).correct


def test_counting_exactly_n():
    md = counting_md("clock", 3)
    assert evaluate(md, row(3)).correct
    assert not evaluate(md, row(2)).correct  # include: fewer than 3
    res = evaluate(md, row(4))  # exclude: at least 4
    assert not res.correct
    assert "clock<4" in res.reason


def test_counting_uses_strict_0_9_cut():
    md = counting_md("clock", 2)
    # the third clock at exactly 0.9 is not counted -> exactly 2
    assert evaluate(md, row(2) + [det("clock", (100, 0, 110, 10), 0.9)]).correct
    # at 0.9001 it counts -> 3 -> exclude fires
    assert not evaluate(md, row(2) + [det("clock", (100, 0, 110, 10), 0.9001)]).correct
    # scores that pass 0.3 but not 0.9 do not count for the counting tag
    assert not evaluate(md, row(2, score=0.8)).correct
    # ... while the same detections count for another tag
    two = {"tag": "two_object", "include": [{"class": "clock", "count": 2}], "prompt": "x"}
    assert evaluate(two, row(2, score=0.8)).correct


def test_at_most_16_per_class():
    md = counting_md("clock", 16)  # exclude fires at >= 17
    assert evaluate(md, row(20)).correct  # 20 detections, only 16 kept


def test_more_than_count_allowed_without_exclude():
    assert evaluate(SINGLE, [det("cup", (0, 0, 10, 10)), det("cup", (20, 0, 30, 10))]).correct


def test_failing_include_and_other_classes_ignored():
    md = {"tag": "two_object", "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1}], "prompt": "x"}
    res = evaluate(md, [det("cup", (0, 0, 10, 10)), det("cat", (20, 0, 30, 10))])
    assert not res.correct
    assert "dog>=1, found 0" in res.reason
    assert evaluate(md, [det("cup", (0, 0, 10, 10)), det("dog", (20, 0, 30, 10)), det("cat", (40, 0, 50, 10))]).correct


def test_exclude_fires_at_count():
    md = {"tag": "counting", "include": [], "exclude": [{"class": "cat", "count": 2}], "prompt": "x"}
    assert evaluate(md, row(1, cls="cat")).correct
    assert not evaluate(md, row(2, cls="cat")).correct


# ------------------------------------------------------------------------------------------
# colour
# ------------------------------------------------------------------------------------------
RED_CAR = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"}


def test_colour_checks_only_top_count_objects_by_score():
    blue_hi = det("car", (0, 0, 10, 10), 0.9, "blue")
    red_lo = det("car", (20, 0, 30, 10), 0.8, "red")
    assert not evaluate(RED_CAR, [red_lo, blue_hi]).correct  # top-1 by score is blue
    assert evaluate(RED_CAR, [det("car", (0, 0, 10, 10), 0.7, "blue"), red_lo]).correct


def test_colour_needs_count_matches_among_top_count():
    md = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}], "prompt": "x"}
    two_red = [det("car", (0, 0, 10, 10), 0.9, "red"), det("car", (20, 0, 30, 10), 0.8, "red")]
    assert evaluate(md, two_red).correct
    mixed = [det("car", (0, 0, 10, 10), 0.9, "red"), det("car", (20, 0, 30, 10), 0.8, "blue"), det("car", (40, 0, 50, 10), 0.7, "red")]
    assert not evaluate(md, mixed).correct  # the third (red) car is not among the top 2


def test_color_of_called_lazily_on_top_count_only():
    calls = []

    def color_of(d):
        calls.append(d)
        return "red"

    cars = [det("car", (0, 0, 10, 10), 0.9), det("car", (20, 0, 30, 10), 0.8), det("car", (40, 0, 50, 10), 0.7)]
    assert evaluate(RED_CAR, cars, color_of=color_of).correct
    assert calls == [cars[0]]
    calls.clear()
    evaluate(SINGLE, [det("cup", (0, 0, 10, 10))], color_of=color_of)  # no colour clause
    assert calls == []


# ------------------------------------------------------------------------------------------
# position
# ------------------------------------------------------------------------------------------
def position_md(rel, ref_clause=None):
    ref = ref_clause or {"class": "teddy bear", "count": 1}
    return {
        "tag": "position",
        "include": [ref, {"class": "dog", "count": 1, "position": [rel, 0]}],
        "prompt": f"a photo of a dog {rel} a teddy bear",
    }


BEAR = det("teddy bear", (40, 40, 50, 50), 0.9, "brown")


@pytest.mark.parametrize(
    "rel,dog_box",
    [("left of", (10, 40, 20, 50)), ("right of", (70, 40, 80, 50)), ("above", (40, 10, 50, 20)), ("below", (40, 70, 50, 80))],
)
def test_each_relation(rel, dog_box):
    dog = det("dog", dog_box)
    assert evaluate(position_md(rel), [BEAR, dog]).correct
    others = {"left of", "right of", "above", "below"} - {rel}
    for other in others:
        assert not evaluate(position_md(other), [BEAR, dog]).correct


def test_position_fails_when_reference_group_failed():
    dog = det("dog", (70, 40, 80, 50))
    # the reference clause fails on colour -> its group failed -> position clause fails
    md = position_md("right of", {"class": "teddy bear", "count": 1, "color": "red"})
    res = evaluate(md, [BEAR, dog])
    assert not res.correct
    assert ("include[1] position", False) in res.checks
    assert "no target" in res.reason
    # reference missing entirely
    assert not evaluate(position_md("right of"), [dog]).correct


def test_position_every_object_against_every_reference():
    md = {
        "tag": "position",
        "include": [{"class": "cat", "count": 2}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "x",
    }
    cats = [det("cat", (0, 0, 10, 10)), det("cat", (100, 0, 110, 10))]
    assert not evaluate(md, cats + [det("dog", (50, 0, 60, 10))]).correct  # left of the second cat
    assert evaluate(md, cats + [det("dog", (150, 0, 160, 10))]).correct


# ------------------------------------------------------------------------------------------
# partial score and aggregation
# ------------------------------------------------------------------------------------------
def test_partial_counts_sub_checks():
    md = counting_md("clock", 2)  # include count + exclude
    assert evaluate(md, row(2)).partial == 1.0
    assert evaluate(md, row(3)).partial == pytest.approx(0.5)
    ca = {
        "tag": "color_attr",
        "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "cup", "count": 1, "color": "blue"}],
        "prompt": "x",
    }
    res = evaluate(ca, [det("car", (0, 0, 10, 10), 0.9, "red"), det("cup", (20, 0, 30, 10), 0.9, "green")])
    assert not res.correct and res.partial == pytest.approx(3 / 4)
    assert evaluate(ca, []).partial == 0.0
    res = evaluate(position_md("left of"), [BEAR, det("dog", (70, 40, 80, 50))])  # wrong side
    assert not res.correct and res.partial == pytest.approx(2 / 3)


def test_summary_is_mean_over_images_then_unweighted_over_tags():
    recs = [{"tag": "counting", "correct": c} for c in (True, True, True, False)]
    recs.append({"metadata": {"tag": "position"}, "correct": True})
    out = geneval_summary(recs)
    assert out["counting"] == pytest.approx(0.75)
    assert out["position"] == pytest.approx(1.0)
    assert out["overall"] == pytest.approx(0.875)  # not 4/5
    assert list(out) == ["counting", "position", "overall"]
