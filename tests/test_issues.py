"""famus issues / famus.label_issues: the flagged set, absolute paths, export, warnings when training was too short."""

import argparse
import json
import math

import numpy as np
import pytest

import famus
from famus.data.imagelist import read_list
from famus.issues import ARRAYS, LabelIssues, add_arguments, export, flag_issues, run_cli, write_scores


def _scores(n=400, noise=0.3, seed=0, classes=4):
    """Meta-weight-like scores: wrong labels near 0 (some exactly 0), right ones around 1-2."""
    rng = np.random.default_rng(seed)
    bad = rng.random(n) < noise
    score = np.where(bad, rng.uniform(0, 0.2, n) * (rng.random(n) < 0.7), rng.uniform(0.7, 2.5, n))
    return score, bad, rng.integers(0, classes, n)


def test_flag_issues_finds_a_separate_low_group_per_class():
    score, bad, given = _scores()
    flagged, info = flag_issues(score, given)
    precision, recall = bad[flagged].mean(), flagged[bad].mean()
    assert precision > 0.9 and recall > 0.95, (precision, recall)  # soft counts: a few borderline extra
    assert abs(info["estimated_noise_rate"] - bad.mean()) < 0.05 and info["separation"] > 2
    assert sum(info["per_class"].values()) == flagged.sum()
    for k, n_k in info["per_class"].items():  # each class's n_k lowest scores
        rows = np.flatnonzero(given == k)
        assert set(rows[flagged[rows]]) == set(rows[np.argsort(score[rows])[:n_k]])
    score[:5] = np.nan  # never visited: never flagged
    assert not flag_issues(score, given)[0][:5].any()
    assert not flag_issues(np.ones(50), np.zeros(50, int))[0].any()  # constant scores: nothing to split


def _run(tmp_path, score, given, predicted, metrics=None, summary=None, names=("ant", "bee", "cat dog", "eel")):
    run = tmp_path / "run"
    run.mkdir()
    n = score.size
    write_scores(run / "example_scores.csv", np.arange(n) + 100, [f"{names[g]}/{i}.png" for i, g in enumerate(given)],
                 given, predicted, score, list(names))
    (run / "classes.json").write_text(json.dumps(list(names)))
    (run / "config.yaml").write_text("method: mwnet\n")
    (run / "summary.json").write_text(json.dumps({"clean_score": "meta_weight", "data_root": str(tmp_path / "data"),
                                                  **(summary or {})}))
    rows = metrics or [{"epoch": 30, "val_acc": 0.9, "test_acc": 0.88, "meta_steps": 3000}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_label_issues_is_a_documented_object_with_absolute_paths(tmp_path):
    score, bad, given = _scores(200)
    run = _run(tmp_path, score, given, given)
    issues = famus.label_issues(run)
    assert isinstance(issues, LabelIssues) and len(issues) == 200 and issues.keys() == ARRAYS
    for key in ARRAYS:
        assert issues[key] is getattr(issues, key)
    with pytest.raises(KeyError, match="LabelIssues holds the arrays"):
        issues["score"]
    k = int(issues.flagged.sum())
    assert k and issues.flagged[:k].all() and not issues.flagged[k:].any()  # flagged first
    assert np.all(np.diff(issues.clean_score[:k]) >= 0) and np.all(np.diff(issues.clean_score[k:]) >= 0)
    assert all(p.startswith(str(tmp_path / "data") + "/") for p in issues.path)
    assert issues.flagged_only().flagged.all() and len(issues.flagged_only()) == k
    assert len(issues.top(5)) == 5 and issues.top(5).class_names == issues.class_names
    d = issues.to_dict()
    assert set(d) == {*ARRAYS, "class_names", "estimated_noise_rate", "warnings"} and d["warnings"] == []
    json.dumps(d)  # JSON-ready
    assert bad[issues.index[issues.flagged] - 100].mean() > 0.9


def test_export_kept_and_flagged_lists(tmp_path):
    score, bad, given = _scores(120, seed=3)
    issues = famus.label_issues(_run(tmp_path, score, given, given))
    files = export(issues, tmp_path / "out")
    kept_paths, kept_labels, _ = read_list(files["kept.txt"])  # the list format famus trains on
    flagged_paths, flagged_labels, _ = read_list(files["flagged.txt"])
    assert len(kept_paths) + len(flagged_paths) == 120 and not set(kept_paths) & set(flagged_paths)
    assert set(flagged_paths) == set(issues.path[issues.flagged]) and all(p.startswith("/") for p in kept_paths)
    names = ["ant", "bee", "2", "eel"]  # 'cat dog' has a space: its index stands in (the label is the last token)
    expect = {p: names[g] for p, g in zip(issues.path, issues.given_label)}
    assert all(expect[p] == lab for p, lab in zip(kept_paths + flagged_paths, kept_labels + flagged_labels))
    assert read_list(files["test.txt"])[0] == []  # an empty test list: --dataset listfile needs one
    rows = (tmp_path / "out" / "issues.csv").read_text().splitlines()
    assert rows[0].startswith("rank,flagged,index,path") and len(rows) == 121


def test_warnings_when_the_model_has_not_learned(tmp_path, capsys):
    rng = np.random.default_rng(1)
    given = rng.integers(0, 4, 300)
    flat = 1.0 + 0.01 * rng.standard_normal(300)  # scores in one tight group
    health = {"w_cv": 0.01, "flags": []}  # logged flags do not count: the current rule judges the numbers
    run = _run(tmp_path, flat, given, rng.integers(0, 4, 300),
               metrics=[{"epoch": 3, "val_acc": 0.3, "meta_steps": 60, "health": health}])
    issues = famus.label_issues(run)
    text = "\n".join(issues.warnings)
    assert "accuracy is 30.0%, near chance (25.0% for 4 classes)" in text and "it ran 1 epochs" in text
    assert "only 60 meta updates" not in text  # 60 is enough to judge
    (tmp_path / "few").mkdir()
    few = famus.label_issues(_run(tmp_path / "few", flat, given, given, metrics=[{"epoch": 3, "meta_steps": 9}]))
    assert "made only 9 meta updates in 1 epochs" in "\n".join(few.warnings)
    assert "nearly constant" in text and "health check at the last epoch: flat" in text
    parser = add_arguments(argparse.ArgumentParser())
    assert run_cli(parser.parse_args([str(run), "--top", "3", "--export", str(tmp_path / "x")])) == 0
    out, err = capsys.readouterr()
    assert "flagged" in out and "wrote" in out and (tmp_path / "x" / "kept.txt").is_file()
    assert err.count("famus issues: warning:") == len(issues.warnings) >= 3
    (tmp_path / "g").mkdir()
    score, _bad, given = _scores(300)
    good = _run(tmp_path / "g", score, given, given)  # a trained model, scores in two groups: no warning
    assert famus.label_issues(good).warnings == []


def test_nan_scores_sort_last_and_count_nothing(tmp_path):
    score, bad, given = _scores(100)
    score[[3, 7]] = np.nan
    issues = famus.label_issues(_run(tmp_path, score, given, given))
    assert math.isnan(issues.clean_score[-1]) and math.isnan(issues.clean_score[-2])
    assert not issues.flagged[-2:].any()
