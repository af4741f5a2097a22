"""Matrix Nuclear-Norm: the column-norm approximation (``nuclear_approx``, O(B C)) vs the SVD route
(``torch.linalg.svdvals``, O(B C min(B, C))) on one softmax matrix [B, C] at growing sizes.

Li et al. 2024 report 8-24x over matrix entropy (also an SVD) on LLMs of 111M-6.7B parameters. The
matrices are float32 softmax outputs of Gaussian logits (std 3: a moderately confident model).
``agree``: the approximation lies in [exact, sqrt(C) exact] (C <= B, module docstring of
zoo.metrics.nuclear); each record carries the approximation ratio approx / exact. One JSON line
per size; the last (the largest size) is the headline, ratio = SVD time / approximation time.
"""

from __future__ import annotations

import argparse
import math

import _harness as h
import torch

from zoo.metrics.nuclear import nuclear_approx, nuclear_exact

SIZES = [(256, 10), (1024, 100), (2048, 500), (4096, 1000)]
QUICK = [(64, 10), (256, 100)]


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = h.start(ap)
    g = torch.Generator().manual_seed(0)
    records = []
    for b, c in QUICK if args.quick else SIZES:
        a = torch.softmax(3 * torch.randn(b, c, generator=g), -1)
        ours, svd = h.interleave(lambda a=a: nuclear_approx(a), lambda a=a: nuclear_exact(a),
                                 rounds=args.rounds, warmup=args.warmup)
        approx, exact = float(ours.value), float(svd.value)
        agree = exact * (1 - 1e-5) <= approx <= math.sqrt(min(b, c)) * exact * (1 + 1e-5)
        records.append(h.result("nuclear_norm", "torch.linalg.svdvals(A).sum()", ours, svd, agree=agree,
                                case=f"softmax matrix {b}x{c}", rows=b, classes=c,
                                approx_over_exact=approx / exact))
    h.emit(records)


if __name__ == "__main__":
    main()
