"""Phase diagram of a zoo with pandas only: mean test accuracy per (capacity, temperature) cell.

    python examples/phase_diagram.py --zoo zoo-out --out phase.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True, help="a published zoo folder")
    p.add_argument("--out", default="phase_diagram.png")
    p.add_argument("--capacity", default="config.arch.width", help="models.parquet column for the y axis")
    p.add_argument("--temperature", default="config.train.lr", help="column for the x axis")
    p.add_argument("--value", default="test_acc")
    args = p.parse_args(argv)

    models = pd.read_parquet(Path(args.zoo) / "models.parquet")
    grid = models[models["status"] == "ok"].pivot_table(
        index=args.capacity, columns=args.temperature, values=args.value, aggfunc="mean")

    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index])
    ax.set_xlabel(f"temperature ({args.temperature})")
    ax.set_ylabel(f"capacity ({args.capacity})")
    fig.colorbar(im, label=f"mean {args.value}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(grid.round(3).to_string())
    return Path(args.out)


if __name__ == "__main__":
    main()
