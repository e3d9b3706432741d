"""The statistics of the site, on top of scipy/numpy.

- `summarize`: mean and 95 % confidence interval of the mean over seeds (Student t, n-1 degrees
  of freedom); a single value has no interval.
- `rank_columns`: ranks per dataset with ties averaged (fractional ranking, scipy.stats.rankdata).
- `friedman` + `critical_difference` + `cliques`: the Friedman test and the Nemenyi post-hoc
  critical difference of Demšar (2006), "Statistical Comparisons of Classifiers over Multiple Data
  Sets", JMLR 7:1-30, Sect. 3.2.2; q_alpha from its Table 5(a).
- `wilcoxon_many` + `holm`: two-sided Wilcoxon signed-rank tests of paired differences (many at
  once), Holm (1979) step-down correction over the comparisons of one table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from medpeft_cli.report.formatting import is_number

CONFIDENCE = 0.95
ALPHA = 0.05

# Demšar (2006), Table 5(a): critical values q_0.05 of the two-tailed Nemenyi test, k = 2..10
# classifiers (the Studentized range statistic divided by sqrt(2)).
Q_ALPHA_005: dict[int, float] = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


@dataclass(frozen=True)
class Stat:
    """n finite values: their mean, sample standard deviation and 95 % CI half-width (None when n < 2)."""

    n: int
    mean: float | None
    sd: float | None = None
    half_width: float | None = None

    @property
    def low(self) -> float | None:
        return None if self.mean is None or self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.mean is None or self.half_width is None else self.mean + self.half_width


@cache
def t_quantile(df: int) -> float:
    """Two-sided (CONFIDENCE) quantile of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def summarize(values: Iterable[Any]) -> Stat:
    """`Stat` over the finite numbers in `values` (None, NaN and inf are ignored)."""
    nums = [float(v) for v in values if is_number(v)]
    n = len(nums)
    if n == 0:
        return Stat(0, None)
    mean = math.fsum(nums) / n
    if n == 1:
        return Stat(1, mean)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in nums) / (n - 1))
    return Stat(n, mean, sd, t_quantile(n - 1) * sd / math.sqrt(n))


def rank_columns(matrix: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rank the rows (methods) within each column (dataset): 1 = best, ties get their average rank.

    NaN (no result) stays NaN and takes no rank.
    """
    from scipy.stats import rankdata

    if matrix.size == 0:
        return matrix.copy()
    scores = -matrix if higher_is_better else matrix
    return rankdata(scores, axis=0, nan_policy="omit")


@dataclass(frozen=True)
class Friedman:
    k: int  # methods
    n: int  # datasets (blocks)
    chi2: float
    p: float
    iman_davenport_f: float | None  # Iman & Davenport's F (Demšar eq. 2); None when undefined
    p_f: float | None


def friedman(matrix: np.ndarray) -> Friedman:
    """Friedman test on a complete datasets x methods matrix (rows = blocks); needs k >= 3 and n >= 2."""
    from scipy import stats

    n, k = matrix.shape
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all ties: chi2 is NaN, reported as such
        chi2, p = stats.friedmanchisquare(*matrix.T)
    chi2 = float(chi2)
    denom = n * (k - 1) - chi2
    if denom > 0 and n >= 2:
        f_stat = (n - 1) * chi2 / denom
        p_f = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    else:
        f_stat, p_f = None, None
    return Friedman(k, n, chi2, float(p), f_stat, p_f)


@cache
def q_alpha(k: int) -> float:
    """Nemenyi critical value at alpha = 0.05 for k methods: Demšar's Table 5(a) up to 10, beyond
    that the same definition (Studentized range quantile, infinite df, / sqrt(2)) from scipy."""
    if k < 2:
        raise ValueError("the Nemenyi test needs at least 2 methods")
    if k in Q_ALPHA_005:
        return Q_ALPHA_005[k]
    from scipy import stats

    return float(stats.studentized_range.ppf(1 - ALPHA, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int) -> float:
    """CD = q_alpha * sqrt(k (k + 1) / (6 n)) (Demšar 2006, Sect. 3.2.2)."""
    return q_alpha(k) * math.sqrt(k * (k + 1) / (6.0 * n))


def cliques(sorted_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs [i, j] (indices into ascending average ranks) whose spread is below the CD:
    groups of methods that are not significantly different; single methods are left out."""
    spans: list[tuple[int, int]] = []
    for i in range(len(sorted_ranks)):
        j = i
        while j + 1 < len(sorted_ranks) and sorted_ranks[j + 1] - sorted_ranks[i] < cd:
            j += 1
        if j > i and not (spans and spans[-1][1] >= j):
            spans.append((i, j))
    return spans


@dataclass(frozen=True)
class Wilcoxon:
    n: int  # pairs
    statistic: float | None
    p: float | None
    median_diff: float | None


def _has_ties_or_zeros(d: Sequence[float]) -> bool:
    magnitudes = np.abs(np.asarray(d, dtype=float))
    return bool((magnitudes == 0).any() or len(np.unique(magnitudes)) < len(magnitudes))


def wilcoxon_many(diffs: Sequence[Sequence[float]]) -> list[Wilcoxon]:
    """Two-sided Wilcoxon signed-rank test of each vector of paired differences.

    p-values are exact when the differences have no ties and no zeros, else from the normal
    approximation with tie correction (zeros dropped, Wilcoxon's rule) — scipy's default there is
    a permutation test, far too slow for the thousands of tests of a large site. Vectors of the same
    length and kind go to scipy in one call (axis=1). Fewer than 2 pairs: no test (p None). All
    differences zero: p = 1.
    """
    from scipy import stats

    results: list[Wilcoxon | None] = [None] * len(diffs)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, d in enumerate(diffs):
        method = "asymptotic" if len(d) >= 2 and _has_ties_or_zeros(d) else "exact"
        groups.setdefault((len(d), method), []).append(i)
    for (length, method), idx in groups.items():
        if length < 2:
            for i in idx:
                med = float(np.median(diffs[i])) if length else None
                results[i] = Wilcoxon(length, None, None, med)
            continue
        matrix = np.asarray([diffs[i] for i in idx], dtype=float)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.wilcoxon(matrix, axis=1, method=method)
        stat = np.atleast_1d(res.statistic)
        pvalue = np.atleast_1d(res.pvalue)
        for row, i in enumerate(idx):
            all_zero = not np.any(matrix[row])
            p = 1.0 if all_zero else float(pvalue[row])
            results[i] = Wilcoxon(length, float(stat[row]), p if math.isfinite(p) else None, float(np.median(matrix[row])))
    return results  # type: ignore[return-value]


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm (1979) step-down adjusted p-values; None entries are skipped and stay None.

    scipy has Benjamini-Hochberg (false_discovery_control) but not Holm's family-wise method.
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
