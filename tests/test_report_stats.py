"""Aggregation and statistics of the leaderboard on hand-made rows with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from medpeft_cli.report.boards import build_boards
from medpeft_cli.report.catalog import Catalog
from medpeft_cli.report.overview import build_views
from medpeft_cli.report.runs import make_run
from medpeft_cli.report.significance import FRACTIONS, analyse, analyse_boards
from medpeft_cli.report.stats import (
    Q_ALPHA_005,
    Stat,
    cliques,
    critical_difference,
    friedman,
    holm,
    q_alpha,
    rank_columns,
    summarize,
    wilcoxon_many,
)

T_975_2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (any t table)


def row(method, dataset, f1, seed=0, *, key=None, fraction=1.0, protocol=1, backbone="vit", weights="in21k", task="classification", status="ok", **kw):
    r = {
        "run_key": key or f"{protocol}-{backbone}-{weights}-{dataset}-{method}-{fraction}-{seed}-{kw.get('lr', 0)}",
        "protocol_version": protocol, "status": status, "task": task, "dataset": dataset, "backbone": backbone,
        "weights": weights, "method": method, "data_fraction": fraction, "seed": seed, "test_macro_f1": f1,
        "trainable_params": 1000, "total_params": 100_000,
    }  # fmt: skip
    r.update(kw)
    return r


def boards_of(rows, catalog=None):
    runs = [make_run(r, catalog) for r in rows]
    boards = build_boards(runs)
    return boards, build_views(boards, catalog)


def default_view(board, views):
    (view,) = [v for v in views[board.id] if v.is_default]
    return view


# --- mean and CI ----------------------------------------------------------------------------------


def test_mean_and_95ci_over_seeds():
    stat = summarize([0.5, 0.6, 0.7])
    assert stat.n == 3
    assert stat.mean == pytest.approx(0.6)
    assert stat.sd == pytest.approx(0.1)
    assert stat.half_width == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))  # 0.2484
    assert (stat.low, stat.high) == pytest.approx((0.6 - 0.248414, 0.6 + 0.248414), abs=1e-6)


def test_a_single_seed_has_no_interval_and_junk_is_ignored():
    assert summarize([0.8]) == Stat(1, 0.8)
    assert summarize([None, float("nan"), 0.4, float("inf"), True]) == Stat(1, 0.4)
    assert summarize([]) == Stat(0, None)
    assert summarize([0.3, 0.3]).half_width == 0.0


def test_cell_reports_mean_ci_and_n():
    boards, views = boards_of([row("lora", "d1", v, seed=s) for s, v in enumerate([0.5, 0.6, 0.7])])
    (board,) = boards
    cell = board.cell(1.0, "lora", "d1")
    assert cell.n == 3
    assert cell.stats["macro_f1"].mean == pytest.approx(0.6)
    assert cell.stats["macro_f1"].half_width == pytest.approx(0.248414, abs=1e-6)


# --- ranks, best, averages ------------------------------------------------------------------------


TIES = [
    # d1: A and B tie for first -> both rank 1.5, C rank 3;  d2: C > B > A
    row("A", "d1", 0.8), row("B", "d1", 0.8), row("C", "d1", 0.7),
    row("A", "d2", 0.6), row("B", "d2", 0.7), row("C", "d2", 0.9),
]  # fmt: skip


def test_ranks_average_ties_and_average_over_datasets():
    boards, views = boards_of(TIES)
    view = default_view(boards[0], views)
    by = {r.method: r for r in view.rows}
    assert by["A"].ranks == [1.5, 3.0]
    assert by["B"].ranks == [1.5, 2.0]
    assert by["C"].ranks == [3.0, 1.0]
    assert by["A"].avg_rank == pytest.approx(2.25)
    assert by["B"].avg_rank == pytest.approx(1.75)
    assert by["C"].avg_rank == pytest.approx(2.0)
    assert by["A"].avg == pytest.approx(0.7)
    assert by["C"].avg == pytest.approx(0.8)
    # sorted by average rank; best of each column marked, ties both marked
    assert [r.method for r in view.rows] == ["B", "C", "A"]
    assert by["A"].best == [True, False] and by["B"].best == [True, False] and by["C"].best == [False, True]


def test_lower_is_better_metrics_rank_the_other_way():
    rows = [
        row("A", "d1", None, task="t2i", metrics_json=json.dumps({"test": {"fid": 30.0, "kid": 0.02}})),
        row("B", "d1", None, task="t2i", metrics_json=json.dumps({"test": {"fid": 20.0, "kid": 0.03}})),
    ]
    boards, views = boards_of(rows)
    (board,) = boards
    assert [m.name for m in board.metrics] == ["fid", "kid"]
    assert board.default.name == "fid"  # the study's generation metric
    view = default_view(board, views)
    assert [(r.method, r.ranks, r.best) for r in view.rows] == [("B", [1.0], [True]), ("A", [2.0], [False])]
    kid = next(v for v in views[board.id] if v.metric.name == "kid")
    assert [r.method for r in kid.rows] == ["A", "B"]


def test_a_method_missing_a_dataset_is_marked_incomplete_and_sorted_last():
    boards, views = boards_of([row("A", "d1", 0.9), row("B", "d1", 0.5), row("B", "d2", 0.5)])
    view = default_view(boards[0], views)
    assert [(r.method, r.complete, r.n_datasets) for r in view.rows] == [("B", True, 2), ("A", False, 1)]
    assert view.rows[1].avg_rank == 1.0  # over the one dataset it has


# --- what is never aggregated together ------------------------------------------------------------


def test_protocol_versions_weights_and_tasks_get_separate_boards():
    rows = [
        row("A", "d1", 0.5, seed=0), row("A", "d1", 0.7, seed=1),
        row("A", "d1", 0.9, seed=0, protocol=2),
        row("A", "d1", 0.1, seed=0, weights="random"),
    ]  # fmt: skip
    boards, views = boards_of(rows)
    assert [(b.protocol_version, b.weights) for b in boards] == [(2, "in21k"), (1, "in21k"), (1, "random")]
    means = [b.cell(1.0, "A", "d1").stats["macro_f1"].mean for b in boards]
    assert means == pytest.approx([0.9, 0.6, 0.1])


def test_runs_that_did_not_finish_never_enter_a_mean():
    boards, _ = boards_of([row("A", "d1", 0.5, seed=0), row("A", "d1", float("nan"), seed=1, status="diverged"), row("A", "d1", 0.99, seed=2, status="failed")])
    (board,) = boards
    assert board.cell(1.0, "A", "d1").stats["macro_f1"] == Stat(1, 0.5)
    assert sorted(r.row["status"] for r in board.excluded) == ["diverged", "failed"]


def test_fractions_are_separate_views_with_full_data_as_default():
    boards, views = boards_of([row("A", "d1", 0.9), row("A", "d1", 0.4, fraction=0.1), row("A", "d1", 0.3, fraction=0.05)])
    (board,) = boards
    assert board.fractions == [1.0, 0.1, 0.05]
    assert board.main_fraction == 1.0
    assert [v.fraction for v in views[board.id]] == [1.0, 0.1, 0.05]
    assert [v.rows[0].avg for v in views[board.id]] == pytest.approx([0.9, 0.4, 0.3])
    only_small = build_boards([make_run(row("A", "d1", 0.4, fraction=0.1)), make_run(row("A", "d1", 0.3, fraction=0.05))])
    assert only_small[0].main_fraction == 0.1  # the largest fraction when 100 % is absent


def test_several_settings_in_a_cell_report_the_best_on_validation():
    spec = lambda lr: json.dumps({"dataset": "d1", "seed": 0, "method": {"name": "A"}, "train": {"lr": lr}})  # noqa: E731
    rows = [
        row("A", "d1", 0.90, seed=0, lr=1e-2, val_macro_f1=0.60, spec_json=spec(1e-2)),
        row("A", "d1", 0.50, seed=0, lr=1e-3, val_macro_f1=0.80, spec_json=spec(1e-3)),
        row("A", "d1", 0.54, seed=1, lr=1e-3, val_macro_f1=0.82, spec_json=spec(1e-3)),
    ]
    (board,), _ = boards_of(rows)
    cell = board.cell(1.0, "A", "d1")
    assert cell.n_settings == 2
    assert cell.n == 2 and cell.stats["macro_f1"].mean == pytest.approx(0.52)  # not the higher test score
    assert "train.lr=0.001" in cell.setting_note and "2 settings" in cell.setting_note


# --- tests against full fine-tuning ---------------------------------------------------------------


def test_wilcoxon_vs_full_is_paired_by_dataset_and_seed_and_holm_corrected():
    rows = []
    for d in ("d1", "d2", "d3"):
        for s in (0, 1):
            base = 0.5 + 0.1 * s + (0.05 if d == "d2" else 0.0)
            rows.append(row("full", d, base, seed=s))
            rows.append(row("A", d, base + 0.01 * (1 + s + 2 * ("d1", "d2", "d3").index(d)), seed=s))  # always better
            rows.append(row("B", d, base + (0.02 if s == 0 else -0.02), seed=s))  # mixed
    rows.append(row("A", "d1", 0.99, seed=7))  # no full run with seed 7: not paired
    (board,), views = boards_of(rows)
    view = default_view(board, views)
    by = {r.method: r for r in view.rows}
    assert by["full"].vs_control is None
    a, b = by["A"].vs_control, by["B"].vs_control
    assert a.test.n == 6 and b.test.n == 6
    assert a.test.p == pytest.approx(2 / 2**6)  # exact two-sided: all 6 differences positive
    assert a.test.median_diff > 0
    expected = sps.wilcoxon([0.02, -0.02] * 3, method="asymptotic").pvalue  # tied differences: normal approximation
    assert b.test.p == pytest.approx(expected)
    assert a.p_holm == pytest.approx(min(1.0, 2 * a.test.p))  # Holm over 2 comparisons
    assert a.verdict == "n.s."  # 0.0625 after correction
    assert b.verdict == "n.s."


def test_significantly_worse_is_reported():
    rows = []
    for d in range(4):
        for s in range(3):
            rows.append(row("full", f"d{d}", 0.8 + 0.01 * s, seed=s))
            rows.append(row("linear", f"d{d}", 0.6 + 0.001 * (d * 3 + s), seed=s))
    (board,), views = boards_of(rows)
    vs = {r.method: r for r in default_view(board, views).rows}["linear"].vs_control
    assert vs.test.n == 12 and vs.test.p < 0.01 and vs.verdict == "worse"


def test_wilcoxon_many_matches_one_call_per_test():
    rng = np.random.default_rng(0)
    diffs = [list(rng.normal(0.1, 1, 8)), list(rng.normal(0, 1, 8)), [0.0] * 8, list(rng.normal(0, 1, 12)), [0.3], []]
    diffs[1][:2] = [0.0, 0.0]
    got = wilcoxon_many(diffs)
    assert got[0].p == pytest.approx(sps.wilcoxon(diffs[0], method="exact").pvalue)  # no ties: exact
    assert got[3].p == pytest.approx(sps.wilcoxon(diffs[3], method="exact").pvalue)
    assert got[1].p == pytest.approx(sps.wilcoxon(diffs[1], method="asymptotic").pvalue)  # zeros: approximation
    assert got[2].p == 1.0  # all differences zero
    assert got[4].p is None and got[4].n == 1
    assert got[5].p is None and got[5].median_diff is None


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, None, 0.001]) == [pytest.approx(0.5), None, pytest.approx(0.002)]
    assert holm([0.6, 0.7]) == [pytest.approx(1.0), pytest.approx(1.0)]


# --- Friedman and Nemenyi -------------------------------------------------------------------------


def test_q_alpha_is_demsar_table_5a_and_scipy_agrees():
    assert Q_ALPHA_005[4] == 2.569 and Q_ALPHA_005[10] == 3.164
    for k, q in Q_ALPHA_005.items():
        assert sps.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2) == pytest.approx(q, abs=2e-3)
    assert q_alpha(17) == pytest.approx(3.458, abs=1e-3)  # beyond the table: the same definition
    # Demšar (2006), Sect. 3.2.2 example: 4 classifiers on 14 data sets -> CD = 1.25
    assert critical_difference(4, 14) == pytest.approx(1.25, abs=0.01)


def test_cliques_join_methods_closer_than_the_cd():
    assert cliques([1.0, 1.5, 3.0, 3.2], 1.0) == [(0, 1), (2, 3)]
    assert cliques([1.0, 1.9, 2.8], 1.0) == [(0, 1), (1, 2)]
    assert cliques([1.0, 3.0], 1.0) == []


def test_friedman_matches_scipy_and_iman_davenport():
    m = np.array([[0.9, 0.8, 0.7, 0.6], [0.85, 0.86, 0.6, 0.5], [0.7, 0.65, 0.72, 0.4], [0.8, 0.7, 0.6, 0.55]])
    res = friedman(m)
    chi2, p = sps.friedmanchisquare(*m.T)
    assert (res.chi2, res.p) == pytest.approx((chi2, p))
    assert res.iman_davenport_f == pytest.approx((4 - 1) * chi2 / (4 * 3 - chi2))


def test_critical_difference_analysis_of_a_board():
    rows = [row(m, f"d{d}", v - 0.01 * d, seed=0) for d in range(5) for m, v in (("full", 0.8), ("A", 0.85), ("B", 0.6), ("C", 0.7))]
    rows.append(row("D", "d0", 0.99))  # one dataset only: left out of the complete-block test
    (board,), views = boards_of(rows)
    cd = analyse(default_view(board, views))
    assert cd.methods == ["A", "full", "C", "B"]
    assert cd.avg_ranks == [1.0, 2.0, 3.0, 4.0]
    assert cd.left_out == ["D"]
    assert cd.test.k == 4 and cd.test.n == 5
    assert cd.cd == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 5)))
    assert cd.significant
    assert cd.groups == [(0, 2), (1, 3)]


def test_one_dataset_is_ranked_across_its_data_fractions_first():
    """A one-dataset study (the demo) gets a critical-difference analysis with its data fractions as the
    blocks, on the seed means of each fraction; the per-fraction analyses stay, saying why they have none."""
    scores = {"full": (0.80, 0.67, 0.62), "A": (0.82, 0.68, 0.65), "B": (0.58, 0.51, 0.55), "C": (0.70, 0.64, 0.55)}
    rows = [row(m, "breast", f1 + 0.01 * seed, seed=seed, fraction=fraction)
            for m, per_fraction in scores.items() for fraction, f1 in zip((1.0, 0.2, 0.05), per_fraction) for seed in range(3)]  # fmt: skip
    rows.append(row("D", "breast", 0.9, fraction=1.0))  # at one fraction only: left out of the complete-block test
    (board,), views = boards_of(rows)
    across, *per_fraction = analyse_boards(views)[board.id]
    assert across.blocks == FRACTIONS and across.dataset == "breast" and across.datasets == [1.0, 0.2, 0.05]
    # seed means (+0.01): ranks 100 % A full C B, 20 % A full C B, 5 % A full, then B and C tied at 3.5
    assert across.methods == ["A", "full", "C", "B"] and across.avg_ranks == pytest.approx([1.0, 2.0, 3 + 1 / 6, 3 + 5 / 6])
    assert across.left_out == ["D"] and across.test.k == 4 and across.test.n == 3
    chi2, p = sps.friedmanchisquare(*np.array([[0.81, 0.83, 0.59, 0.71], [0.68, 0.69, 0.52, 0.65], [0.63, 0.66, 0.56, 0.56]]).T)
    assert (across.test.chi2, across.test.p) == pytest.approx((chi2, p))
    assert across.cd == pytest.approx(critical_difference(4, 3))
    assert [cd.view.fraction for cd in per_fraction] == [1.0, 0.2, 0.05]
    assert all(cd.test is None and "2 common datasets" in cd.reason for cd in per_fraction)


def test_several_datasets_get_no_analysis_across_fractions():
    rows = [row(m, d, v, fraction=f) for d in ("d1", "d2") for f in (1.0, 0.2) for m, v in (("full", 0.8), ("A", 0.7), ("B", 0.6))]
    (board,), views = boards_of(rows)
    assert [cd.blocks for cd in analyse_boards(views)[board.id]] == ["datasets", "datasets"]


def test_no_critical_difference_with_too_few_methods():
    (board,), views = boards_of([row("A", "d1", 0.5), row("B", "d1", 0.6), row("A", "d2", 0.5), row("B", "d2", 0.6)])
    cd = analyse(default_view(board, views))
    assert cd.test is None and "at least 3 methods" in cd.reason


def test_rank_columns_leaves_missing_results_unranked():
    ranks = rank_columns(np.array([[0.5, np.nan], [0.5, 0.2], [0.9, 0.3]]), higher_is_better=True)
    assert ranks[:, 0].tolist() == [2.5, 2.5, 1.0]
    assert np.isnan(ranks[0, 1]) and ranks[1:, 1].tolist() == [2.0, 1.0]


def test_method_families_come_from_the_catalogue_per_task():
    catalog = Catalog([
        {"name": "lora", "task": "classification", "kind": "reparameterised", "families": ["vit"]},
        {"name": "norm", "task": "t2i", "kind": "selective", "families": ["unet"]},
    ])  # fmt: skip
    (board,), views = boards_of([row("lora", "d1", 0.5), row("x", "d1", 0.4)], catalog)
    kinds = {r.method: r.kind for r in default_view(board, views).rows}
    assert kinds == {"lora": "reparameterised", "x": "unknown"}
    assert catalog.kind("t2i", "norm") == "selective"
    assert catalog.families() == ["vit", "unet"]
