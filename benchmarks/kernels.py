"""Each zoo kernel against its torch reference on realistic shapes.

    .venv/bin/python benchmarks/kernels.py [--rounds 3] [--dtype float32|bfloat16]

Prints one JSON line per kernel, then a summary line {"benchmark": "kernels", ...} last.
On a machine without CUDA only the torch references run (timed) and the lines say so
("device": "cpu", "triton": "not run: no CUDA"): nothing about Triton speed is claimed there.
With CUDA, each kernel runs through its Triton path and its reference on the same inputs; the lines
give both times, their agreement (max relative error against a stated tolerance) and the achieved
TFLOP/s (GEMM-like kernels) or GB/s (memory-bound ones) as a fraction of the device's peak from a
small table of datasheet numbers (dense, no sparsity) for H100/H200/A100. Triton and reference are
warmed up and interleaved (benchmarks/_harness.py); times are the min over rounds, medians beside.
"""

from __future__ import annotations

import argparse
import json

import _harness as h
import torch

from zoo.kernels import HAS_TRITON, grouped, hsic, interp, tailfit

# datasheet peaks (dense): TFLOP/s for fp32 (CUDA cores), tf32 and bf16 tensor cores; HBM TB/s
PEAKS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "tb_s": 4.8},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "tb_s": 2.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "tb_s": 3.35},  # SXM
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "tb_s": 2.0},
}


def device_peaks(name: str) -> tuple[str | None, dict | None]:
    if "H200" in name:
        return "H200", PEAKS["H200"]
    if "H100" in name:
        key = "H100 PCIe" if "PCIe" in name else "H100"
        return key, PEAKS[key]
    if "A100" in name:
        return "A100", PEAKS["A100"]
    return None, None


def max_rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    finite = torch.isfinite(b)
    return float(((a - b).abs()[finite]).max() / b.abs()[finite].max().clamp(min=1e-30))


def cases(dev, dtype):
    """(name, shape, work, unit, torch_fn, triton_fn, tolerance) per kernel; work in FLOP or bytes."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dev, dt)

    tol = 1e-4 if dtype == torch.float32 else 3e-2
    out = []

    # 1. interp_linear: 64 pairs x 11 points x 1000 samples x 64 -> 64, straight-line path, relu
    p, t, n, w = 64, 11, 1000, 64
    x, wts, b = rnd(p, t, n, w), rnd(2, p, w, w) / 8, rnd(2, p, w)
    c = interp.linear_coeffs(torch.linspace(0, 1, t)).to(dev)
    out.append(("interp_linear", {"P": p, "T": t, "N": n, "in": w, "out": w, "K": 2},
                2.0 * p * t * n * w * w, "flop",
                lambda: interp.interp_linear_torch(x, wts, b, c, "relu"),
                lambda: interp.interp_linear_triton(x, wts, b, c, "relu"), tol))

    # 1b. Bezier (K = 3) with few probe samples per point: where skipping W(t) matters most
    nb = 64
    xb, wb, bb = rnd(p, t, nb, w), rnd(3, p, w, w) / 8, rnd(3, p, w)
    cb = interp.bezier_coeffs(torch.linspace(0, 1, t)).to(dev)
    out.append(("interp_linear_bezier_small_batch", {"P": p, "T": t, "N": nb, "in": w, "out": w, "K": 3},
                2.0 * p * t * nb * w * w, "flop",
                lambda: interp.interp_linear_torch(xb, wb, bb, cb, "relu"),
                lambda: interp.interp_linear_triton(xb, wb, bb, cb, "relu"), tol))

    # 2. population_linear: 64 models x batch 64 x 64 -> 64, relu (forward)
    m, bs = 64, 64
    xl, wl, bl = rnd(m, bs, w), rnd(m, w, w) / 8, rnd(m, w)
    out.append(("population_linear", {"M": m, "B": bs, "in": w, "out": w},
                2.0 * m * bs * w * w, "flop",
                lambda: grouped.population_linear_torch(xl, wl, bl, "relu"),
                lambda: grouped.population_linear_triton(xl, wl, bl, "relu"), tol))

    # 2b. population cross-entropy: 64 models x batch 64 x 10 classes, forward + backward
    z = rnd(m, bs, 10, dt=torch.float32).requires_grad_(True)
    lab = torch.randint(0, 10, (m, bs), generator=g).to(dev)

    def ce_ref():
        loss = grouped.population_cross_entropy_torch(z, lab)
        (gz,) = torch.autograd.grad(loss.sum(), z)
        return gz

    def ce_tri():
        loss = grouped.PopulationCrossEntropy.apply(z, lab)
        (gz,) = torch.autograd.grad(loss.sum(), z)
        return gz

    out.append(("population_cross_entropy_fwd_bwd", {"M": m, "B": bs, "C": 10},
                3.0 * z.numel() * 4, "byte", ce_ref, ce_tri, 1e-5))

    # 3. powerlaw_scan: 64 spectra of 512 eigenvalues (one 512-wide layer per model)
    r, ne = 64, 512
    ev = (torch.rand(r, ne, generator=g, dtype=torch.float64) ** -0.7).to(dev)  # heavy-tailed
    out.append(("powerlaw_scan", {"R": r, "n": ne}, r * ne * (ne + 1) / 2.0, "eval",
                lambda: tailfit.powerlaw_scan_torch(ev)["D"],
                lambda: tailfit.powerlaw_scan_triton(ev)["D"], 1e-5))

    # 4. gram_hsic: CKA of all 2016 pairs of 64 models on 1000 probes, logits (d=10) and hidden (d=64)
    pairs = torch.combinations(torch.arange(64), 2).to(dev)
    for d in (10, 64):
        f = rnd(64, 1000, d, dt=torch.float32)
        out.append((f"gram_hsic_d{d}", {"M": 64, "n": 1000, "d": d, "Q": len(pairs)},
                    2.0 * 1000 * d * d * (len(pairs) + 64), "flop",
                    lambda f=f: hsic.gram_hsic_torch(f, pairs)["cka"],
                    lambda f=f: hsic.gram_hsic_triton(f, pairs)["cka"], 1e-4))
    return out


def main() -> None:
    ap = h.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = h.start(ap)
    cuda = torch.cuda.is_available()
    run_triton = cuda and HAS_TRITON
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak_key, peaks = device_peaks(name) if cuda else (None, None)
    if dtype == torch.bfloat16:
        flop_peak_kind = "bf16"
    else:
        flop_peak_kind = "tf32" if torch.get_float32_matmul_precision() != "highest" else "fp32"
    triton_note = "run" if run_triton else ("not run: no CUDA" if not cuda else "not run: triton missing")

    lines = []
    for kname, shape, work, unit, ref_fn, tri_fn, tol in cases(dev, dtype):
        rec = {"benchmark": "kernel", "case": kname, "kernel": kname, "shape": shape, "dtype": args.dtype,
               "baseline": "torch reference", "device": "cuda" if cuda else "cpu", "device_name": name,
               "triton": triton_note, "rounds": args.rounds}
        sync = torch.cuda.synchronize if cuda else None
        rec["ours_s"] = rec["ours_median_s"] = rec["ratio"] = rec["agree"] = None
        if run_triton:
            ours, base = h.interleave(tri_fn, ref_fn, rounds=args.rounds, warmup=args.warmup, sync=sync)
            rec["ours_s"], rec["ours_median_s"] = ours.min, ours.median
            rec["ratio"] = base.min / ours.min
        else:
            base = h.repeat(ref_fn, rounds=args.rounds, warmup=args.warmup, sync=sync)
        rec["baseline_s"], rec["baseline_median_s"] = base.min, base.median
        if run_triton:
            err = max_rel_err(tri_fn(), ref_fn())
            rec["max_rel_err"] = err
            rec["tolerance"] = tol
            rec["agree"] = err <= tol
        for who in ("baseline", "ours"):
            s = rec[f"{who}_s"]
            if s is None:
                continue
            if unit == "flop":
                rec[f"{who}_tflops"] = work / s / 1e12
                if peaks:
                    rec[f"{who}_peak_fraction"] = rec[f"{who}_tflops"] / peaks[flop_peak_kind]
            elif unit == "byte":
                rec[f"{who}_gb_s"] = work / s / 1e9
                if peaks:
                    rec[f"{who}_peak_fraction"] = rec[f"{who}_gb_s"] / (peaks["tb_s"] * 1e3)
            else:  # exp-bound scan: no datasheet peak applies
                rec[f"{who}_gevals_s"] = work / s / 1e9
        if peaks:
            rec["peak"] = {"device": peak_key, "kind": flop_peak_kind if unit == "flop" else "hbm"}
        lines.append(rec)
        print(json.dumps(rec), flush=True)

    base_total = sum(r["baseline_s"] for r in lines)
    ours_total = sum(r["ours_s"] for r in lines) if run_triton else None
    print(json.dumps({
        "benchmark": "kernels",
        "baseline": "plain-torch references (zoo.kernels.*_torch)",
        "ours_s": ours_total,
        "baseline_s": base_total,
        "rounds": args.rounds,
        "ratio": base_total / ours_total if ours_total else None,
        "agree": all(r["agree"] for r in lines) if run_triton else None,
        "device": "cuda" if cuda else "cpu",
        "device_name": name,
        "triton": triton_note,
        "dtype": args.dtype,
        "kernels": {r["kernel"]: {"baseline_s": r["baseline_s"], "ours_s": r["ours_s"], "ratio": r["ratio"]}
                    for r in lines},
    }))


if __name__ == "__main__":
    main()
