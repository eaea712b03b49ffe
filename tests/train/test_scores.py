"""Clean scores (running mean of the meta weights), their detection quality, model selection, CSV round trip."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import famus
from famus.issues import COLUMNS, detection_quality, format_issues, write_scores
from famus.train.scores import ScoreTracker, score_source
from famus.train.selection import NO_VALIDATION, ModelSelection, chosen_from_records


def test_tracker_is_a_moving_average_of_relative_weights_over_visits():
    t = ScoreTracker(5, "cpu", decay=0.5)
    t.visit(torch.tensor([0, 1]), torch.tensor([0.75, 0.25]), batch_size=2)  # c_i * B: 1.5 and 0.5
    t.visit(torch.tensor([3]), torch.tensor([0.5]), batch_size=2)  # the other half of a 2-example batch
    t.end_epoch()
    assert t.score[:2].tolist() == [1.5, 0.5] and t.score[3].item() == 1.0  # the first visit sets the mean
    assert math.isnan(t.score[2]) and math.isnan(t.score[4]) and t.visits.tolist() == [1, 1, 0, 1, 0]
    t.visit(torch.tensor([0, 2]), torch.tensor([0.25, 0.75]), batch_size=2)
    t.end_epoch()
    assert t.score[0].item() == pytest.approx(0.5 * 1.5 + 0.5 * 0.5) and t.score[2].item() == 1.5
    assert t.score[1].item() == 0.5 and t.visits.tolist() == [2, 1, 1, 1, 0]  # not visited: unchanged
    u = ScoreTracker(5, "cpu", decay=0.5)
    u.load_state_dict(t.state_dict())
    assert torch.equal(u.visits, t.visits) and torch.allclose(u.score, t.score, equal_nan=True)


def test_score_sources():
    assert score_source("mwnet") == score_source("l2r") == "meta_weight"
    assert score_source("erm") == score_source("mlc") == "prob_given_label"  # uniform weights say nothing
    assert score_source("mwnet", "pseudo") == "gmm_clean_probability"


def test_detection_quality_against_hand_made_scores():
    noisy = np.array([True, False, True, False, False, False])
    perfect = np.array([0.1, 0.9, 0.2, 0.8, 0.7, np.nan])  # the NaN (never visited) is left out
    q = detection_quality(perfect, noisy)
    assert q == {"auroc": 1.0, "precision_at_n": 1.0, "precision_at_100": 0.4, "n_noisy": 2, "scored": 5}
    rng = np.random.default_rng(0)
    score, mask = rng.random(200), rng.random(200) < 0.3
    q = detection_quality(score, mask)
    assert q["auroc"] == pytest.approx(roc_auc_score(mask, -score))
    lowest = np.argsort(score)[: mask.sum()]
    assert q["precision_at_n"] == pytest.approx(mask[lowest].mean())
    assert detection_quality(score, np.zeros(200, bool))["auroc"] is None  # no noise: nothing to find


def test_selection_on_validation_never_reads_test():
    sel = ModelSelection(has_val=True)
    chosen = [sel.update(e, v, t) for e, v, t in [(1, 0.5, 0.9), (2, 0.7, 0.1), (3, 0.7, 0.2), (4, 0.6, 0.99)]]
    assert chosen == [True, True, True, False]  # ties: the later epoch
    assert sel.record() == {"val_chosen_acc": 0.2, "val_chosen_epoch": 3}
    last = ModelSelection(has_val=False)
    assert all(last.update(e, None, t) for e, t in [(1, 0.9), (2, 0.3)]) and last.rule == NO_VALIDATION
    assert last.record() == {"val_chosen_acc": 0.3, "val_chosen_epoch": 2}
    rows = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.9}, {"epoch": 2, "val_acc": 0.8, "test_acc": 0.4}]
    assert chosen_from_records(rows)["val_chosen_acc"] == 0.4
    assert chosen_from_records([{"epoch": 1, "test_acc": 0.7}])["selection"] == NO_VALIDATION


def test_scores_csv_round_trip_and_ranking(tmp_path):
    (tmp_path / "classes.json").write_text('["ant", "moth"]')
    score = np.array([0.9, np.nan, 0.1, 0.5])
    write_scores(tmp_path / "example_scores.csv", np.array([10, 11, 12, 13]), ["a.png", "b.png", "c.png", "d.png"],
                 np.array([0, 1, 1, 0]), np.array([0, 0, 0, 1]), score, ["ant", "moth"])
    lines = (tmp_path / "example_scores.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and lines[2] == "11,b.png,1,moth,0,ant,"
    issues = famus.label_issues(tmp_path)
    assert issues.index.tolist() == [12, 13, 10, 11] and issues.path.tolist() == ["c.png", "d.png", "a.png", "b.png"]
    assert issues.given_label.tolist() == [1, 0, 0, 1] and math.isnan(issues.clean_score[-1])
    text = format_issues(issues.top(2))
    assert text.splitlines()[1].split() == ["1", "12", "moth", "ant", "0.1", "no", "c.png"]  # too few to flag
