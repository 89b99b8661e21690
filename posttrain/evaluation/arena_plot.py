"""The picture beside an arena report: per leaderboard, the scores with their 95% intervals, and the win-rate
matrix. Needs matplotlib (the eval extra); without it there is no picture, and eval arena says so."""

from __future__ import annotations

from pathlib import Path


def plot(report: dict, path: Path) -> bool:
    """One row of two panels per leaderboard, as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    boards = report["leaderboards"]
    size = max(len(board["models"]) for board in boards)
    figure, axes = plt.subplots(len(boards), 2, figsize=(13, len(boards) * (2 + 0.5 * size)), squeeze=False)
    for (left, right), board in zip(axes, boards, strict=True):
        draw_scores(left, board)
        draw_win_rates(figure, right, board)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def draw_scores(axes, board: dict) -> None:
    models = board["models"][::-1]  # the best on top
    scores = [m["score"] for m in models]
    below = [score - m["ci95"][0] for score, m in zip(scores, models, strict=True)]
    above = [m["ci95"][1] - score for score, m in zip(scores, models, strict=True)]
    axes.errorbar(scores, range(len(models)), xerr=[below, above], fmt="o", capsize=4)
    axes.axvline(1000, linestyle=":", color="gray")
    axes.set_yticks(range(len(models)), [short(m["model"]) for m in models])
    axes.set_xlabel("score (Elo scale, mean 1000) with its 95% interval")
    axes.set_ylim(-0.5, len(models) - 0.5)
    axes.set_title(f"judge {short(board['judge'], 50)} ({board['kind']})")


def draw_win_rates(figure, axes, board: dict) -> None:
    names = [short(name) for name in board["win_rate"]["models"]]
    matrix = board["win_rate"]["matrix"]
    image = axes.imshow(
        [[float("nan") if v is None else v for v in row] for row in matrix], vmin=0, vmax=1, cmap="RdYlGn"
    )
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            if value is not None:  # None: the pair never met
                axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_title("win rate of row against column (ties half)")
    figure.colorbar(image, ax=axes)


def short(name: str, width: int = 28) -> str:
    """A long model path shortened to its end, which names it."""
    return name if len(name) <= width else "..." + name[-(width - 3) :]
