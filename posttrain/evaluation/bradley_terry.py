"""Bradley-Terry scores on the Elo scale from pairwise battles, as Chatbot Arena computes its leaderboard.

Model i beats model j with probability 1 / (1 + 10^((s_j - s_i) / 400)); the scores are the maximum-likelihood
fit to the battles, a tie counting as half a win each way, shifted so that their mean is 1000 (only differences
are identified). The 95% intervals are percentiles of the scores refitted on battles resampled with replacement.

The fit is Newton's method on the summed wins of each ordered pair, with a very weak Gaussian prior (RIDGE): it
changes well-posed scores by far less than a point, and keeps finite the scores the likelihood alone would send to
infinity (a model that never lost, or never won), which `well_posed` then reports.
"""

from __future__ import annotations

import math

import numpy as np

from posttrain.errors import UserError

OUTCOMES = ("a", "b", "tie")
ELO_PER_NAT = 400 / math.log(10)  # natural log-odds -> Elo points
RIDGE = 1e-4  # on the squared scores in log-odds units: a prior with a standard deviation of about 70 log-odds


def leaderboard(battles: list[tuple[str, str, str]], resamples: int = 1000, seed: int = 0) -> dict:
    """Scores, 95% intervals, counts and the win-rate matrix of the models in `battles` (model_a, model_b,
    outcome "a" | "b" | "tie"), models ordered from the highest score down."""
    if resamples < 1:
        raise UserError("--bootstrap must be at least 1.")
    if not battles:
        raise UserError("No battles to rank: nothing was judged or voted.")
    names = list(dict.fromkeys(name for a, b, _ in battles for name in (a, b)))
    cells, counts = battle_cells(battles, names)
    wins = wins_matrix(cells, counts, len(names))
    scores = fit_scores(wins)
    low, high = bootstrap_intervals(cells, counts, len(names), resamples, seed)
    order = sorted(range(len(names)), key=lambda i: -scores[i])
    tally = outcome_counts(battles)
    games = wins + wins.T
    return {
        "battles": len(battles),
        "well_posed": well_posed(wins),
        "models": [
            {"model": names[i], "score": float(scores[i]), "ci95": [float(low[i]), float(high[i])]} | tally[names[i]]
            for i in order
        ],
        "win_rate": {
            "models": [names[i] for i in order],
            "matrix": [[float(wins[i, j] / games[i, j]) if games[i, j] else None for j in order] for i in order],
        },
        "bootstrap_resamples": resamples,
    }


def battle_cells(battles, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (index of A, index of B, outcome) of the battles, and how often each occurred."""
    index = {name: i for i, name in enumerate(names)}
    cells: dict[tuple[int, int, int], int] = {}
    for a, b, outcome in battles:
        if outcome not in OUTCOMES:
            raise ValueError(f"battle outcome {outcome!r} is not one of {OUTCOMES}")
        key = (index[a], index[b], OUTCOMES.index(outcome))
        cells[key] = cells.get(key, 0) + 1
    return np.array(list(cells), dtype=np.int64).reshape(-1, 3), np.array(list(cells.values()), dtype=np.float64)


def wins_matrix(cells: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
    """wins[i, j]: battles i won against j, plus half of their ties."""
    share_a = np.array([1.0, 0.0, 0.5])[cells[:, 2]]
    wins = np.zeros((size, size))
    np.add.at(wins, (cells[:, 0], cells[:, 1]), counts * share_a)
    np.add.at(wins, (cells[:, 1], cells[:, 0]), counts * (1 - share_a))
    return wins


def fit_scores(wins: np.ndarray, steps: int = 100) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry scores on the Elo scale, mean 1000."""
    games = wins + wins.T
    strength = np.zeros(len(wins))  # log-odds units: P(i beats j) = sigmoid(strength_i - strength_j)

    def loss(x: np.ndarray) -> float:
        return float((wins * np.logaddexp(0, x[None, :] - x[:, None])).sum() + RIDGE * (x @ x))

    current = loss(strength)
    for _ in range(steps):
        p = np.exp(-np.logaddexp(0, strength[None, :] - strength[:, None]))  # p[i, j] = P(i beats j)
        gradient = (games * p).sum(1) - wins.sum(1) + 2 * RIDGE * strength
        weight = games * p * (1 - p)
        hessian = np.diag(weight.sum(1)) - weight + 2 * RIDGE * np.eye(len(wins))
        step = np.linalg.solve(hessian, gradient)
        rate = 1.0
        while loss(strength - rate * step) > current and rate > 1e-6:  # backtrack: Newton may overshoot
            rate /= 2
        strength = strength - rate * step
        current = loss(strength)
        if np.abs(rate * step).max() < 1e-9:
            break
    return ELO_PER_NAT * (strength - strength.mean()) + 1000


def bootstrap_intervals(cells, counts, size: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2.5th and 97.5th percentiles of each score over fits to the battles resampled with replacement (drawing
    len(battles) battles is a multinomial draw over the distinct battles)."""
    rng = np.random.default_rng(seed)
    total = int(counts.sum())
    draws = rng.multinomial(total, counts / total, size=resamples)
    scores = np.stack([fit_scores(wins_matrix(cells, draw.astype(np.float64), size)) for draw in draws])
    return np.percentile(scores, 2.5, axis=0), np.percentile(scores, 97.5, axis=0)


def outcome_counts(battles) -> dict[str, dict[str, int]]:
    tally: dict[str, dict[str, int]] = {}
    for a, b, outcome in battles:
        for name, won in ((a, "a"), (b, "b")):
            row = tally.setdefault(name, {"battles": 0, "wins": 0, "losses": 0, "ties": 0})
            row["battles"] += 1
            row["ties" if outcome == "tie" else "wins" if outcome == won else "losses"] += 1
    return tally


def well_posed(wins: np.ndarray) -> bool:
    """Whether the maximum-likelihood scores are finite: every model can be reached from every other along
    "beat or tied" edges (otherwise some group never lost, or never won, against the rest)."""
    reach = (wins > 0) | np.eye(len(wins), dtype=bool)
    for _ in range(len(wins)):
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    return bool(reach.all())
