"""The `zoo` command: build, presets, info. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .errors import SpecError, ZooError, os_error_line

DEFAULT_OUT = "zoo-out"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        command = " ".join(["zoo", *self.prog.split()[1:]])  # "zoo build", or "zoo" for the main parser
        print(f"zoo: error: {message} (see {command} --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_bytes(text: str) -> int:
    """'512M', '4G', '1.5GiB' or a plain number of bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value * scale) or value <= 0:
        raise SpecError(f"--max-memory: expected a positive size such as 512M or 4G, got {text!r}")
    return int(value * scale)


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return name


def _start_backend(args) -> None:
    """Connect joblib to an existing cluster: Dask (--scheduler) or Ray (--address)."""
    if args.backend == "dask":
        try:
            from distributed import Client
        except ImportError:
            raise SpecError("--backend dask needs dask.distributed: pip install 'zoo[cluster]'") from None
        args._client = Client(args.scheduler) if args.scheduler else Client(processes=True)
    elif args.backend == "ray":
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise SpecError("--backend ray needs ray: pip install 'ray[default]'") from None
        register_ray()
        ray.init(address=args.address, ignore_reinit_error=True, log_to_driver=False)


def _cmd_build(args) -> int:
    from .pipeline import build
    from .spec import load_spec, validate

    spec = load_spec(args.preset, args.set)
    if args.phase:
        spec.phase.sampler = args.phase
        validate(spec)
    device = _resolve_device(args.device)
    if args.precision == "bf16" and device != "cuda":
        raise SpecError("--precision bf16 is for CUDA devices; use fp32 on the CPU")
    max_memory = parse_bytes(args.max_memory) if args.max_memory is not None else None
    _start_backend(args)
    out = build(spec, Path(args.out), jobs=args.jobs, progress=not args.quiet, repair=args.repair,
                backend=args.backend, device=device, max_memory=max_memory, precision=args.precision)
    print(f"published {spec.n_models} models to {out}")
    return 0


def _cmd_presets(args) -> int:
    from .presets_table import preset_rows, table_lines
    from .spec import preset_names

    if args.calibrate:
        from .cost import calibrate

        table = calibrate(_resolve_device(args.device))
        print("calibrated (train GFLOP/s, eval GFLOP/s, ms per step): " + ", ".join(
            f"{k} {c['train_flops_per_s'] / 1e9:.1f}/{c['eval_flops_per_s'] / 1e9:.1f}/{c['step_s'] * 1e3:.2f}"
            for k, c in table.items()))

    for line in table_lines(preset_rows(args.names or preset_names())):
        print(line)
    return 0


def _cmd_info(args) -> int:
    from .datasets.reader import load

    folder = Path(args.dir)
    zoo = load(folder)  # checks the folder, its manifest and its schema version
    manifest, models = zoo.manifest, zoo.models
    _require_present(folder, manifest, models)
    spec = manifest["spec"]
    print(f"zoo {spec.get('name')!r} in {folder}  (zoo {manifest.get('zoo_version')}, torch "
          f"{manifest.get('torch_version')}, created {manifest.get('created')})")
    print(f"models: {len(models)}  status: {models['status'].value_counts().to_dict()}  "
          f"splits: {models['split'].value_counts().to_dict()}")
    print(f"architectures: {models['arch_id'].nunique()}  params/model: {models['n_params'].min()}"
          f"-{models['n_params'].max()}  populations: {models['population_id'].nunique()}")
    for axis in spec.get("phase", {}).get("axes", []):
        print(f"axis {axis.get('name')}: {axis.get('key')} = {axis.get('values')}")
    ok = models[models["status"] == "ok"]
    for column in ("test_acc", "test_loss"):  # accuracy where the task has one, else the task's loss
        if column in ok and len(ok):
            print(f"{column.replace('_', ' ')}: mean {ok[column].mean():.4g}  min {ok[column].min():.4g}  "
                  f"max {ok[column].max():.4g}")
            break
    from .metrics.coverage import coverage_lines, phase_coverage

    for line in coverage_lines(phase_coverage(models)):
        print(line)
    print(f"files: {len(manifest['files'])}")
    return 0


def _require_present(folder: Path, manifest: dict, models) -> None:
    """The cheap half of `zoo verify`: every file zoo.json lists exists, the HDF5 mirror opens and the
    tables hold the columns info reads (hashes are checked by verify and by every writing command)."""
    from .errors import DatasetError

    missing = sorted(rel for rel in manifest["files"] if not (folder / rel).is_file())
    if missing:
        raise DatasetError(f"{folder / missing[0]} is listed in zoo.json but missing; run `zoo verify {folder}`")
    if (folder / "zoo.h5").is_file():
        import h5py

        try:
            h5py.File(folder / "zoo.h5", "r").close()
        except OSError as e:
            raise DatasetError(f"{folder / 'zoo.h5'} is unreadable ({e}); run `zoo verify {folder}`") from None
    missing = [c for c in ("status", "split", "arch_id", "n_params", "population_id") if c not in models]
    if missing:
        raise DatasetError(f"{folder / 'models.parquet'}: no column {missing[0]!r}; run `zoo verify {folder}`")


def _cmd_verify(args) -> int:
    from .datasets.verify import cmd_verify

    return cmd_verify(args)


def _cmd_export(args) -> int:
    from .datasets.export import cmd_export

    return cmd_export(args)


def _cmd_metrics(args) -> int:
    from .datasets.update import cmd_metrics

    return cmd_metrics(args)


def _cmd_plot(args) -> int:
    from .plots import cmd_plot

    return cmd_plot(args)


def _cmd_study(args) -> int:
    from .studies.runner import cmd_study

    return cmd_study(args)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zoo", description="Model zoos across loss-landscape phases.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="train a zoo and publish it")
    b.add_argument("--phase", choices=["grid", "adaptive"],
                   help="phase sampler: the full grid, or coarse grid + refinement near phase boundaries "
                        "until phase.budget models (overrides the preset's)")
    b.add_argument("--preset", default="default", help="preset name or path to a .toml spec")
    b.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: ./zoo-out)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set train.steps=200 (repeatable)")
    b.add_argument("--jobs", type=int, default=None,
                   help="parallel populations (joblib workers); default: one per usable core, at most one per "
                        "population, each with cores / jobs torch threads")
    b.add_argument("--backend", choices=["loky", "dask", "ray"], default="loky",
                   help="joblib backend: local processes, a Dask cluster or a Ray cluster")
    b.add_argument("--scheduler", help="Dask scheduler address (default: a local cluster)")
    b.add_argument("--address", help="Ray cluster address (default: a local Ray runtime)")
    b.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="training device")
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast on CUDA")
    b.add_argument("--max-memory", help="memory budget per population, e.g. 4G (default: half the free RAM)")
    b.add_argument("--repair", action="store_true", help="move corrupt shards aside and retrain them")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_build)
    pr = sub.add_parser("presets", help="list presets with model counts and cost estimates")
    pr.add_argument("names", nargs="*", help="presets to list (default: all)")
    pr.add_argument("--calibrate", action="store_true", help="measure this machine's throughput first")
    pr.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to calibrate")
    pr.set_defaults(func=_cmd_presets)
    i = sub.add_parser("info", help="summarize a published zoo")
    i.add_argument("dir")
    i.set_defaults(func=_cmd_info)
    v = sub.add_parser("verify", help="re-hash a published zoo and check its tables against zoo.json")
    v.add_argument("dir")
    v.set_defaults(func=_cmd_verify)
    e = sub.add_parser("export", help="write a published zoo as parquet, hdf5 or npz (weights.npy + metrics.csv)")
    e.add_argument("dir")
    e.add_argument("--format", required=True, choices=["parquet", "hdf5", "npz"])
    e.add_argument("--out", required=True, help="output folder (npz, parquet) or .h5 file (hdf5)")
    e.set_defaults(func=_cmd_export)
    m = sub.add_parser("metrics", help="add or recompute metrics on a published zoo without retraining")
    m.add_argument("family", metavar="METRIC",
                   help="a registered metric (zoo/metrics/registry.py: hessian, spectral, connectivity, cka, "
                        "lmc, ...), the group landscape (Hessian, connectivity, CKA), or all")
    m.add_argument("dir")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a metrics field, e.g. --set metrics.hessian_max_iter=50")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_cmd_metrics)
    pl = sub.add_parser("plot", help="draw phase diagrams of a published zoo into DIR/plots/")
    pl.add_argument("dir")
    pl.set_defaults(func=_cmd_plot)
    st = sub.add_parser("study", help="run a downstream study (ensemble, merge, prune, finetune, shift) on a "
                                      "published zoo; writes DIR/studies/NAME.parquet and DIR/plots/study-NAME.png")
    st.add_argument("name", help="study name: ensemble, merge, prune, finetune or shift")
    st.add_argument("dir")
    st.add_argument("--set", action="append", default=[], metavar="study.KEY=VALUE",
                    help="override a study option, e.g. --set study.sparsities=[0.5,0.9] (repeatable)")
    st.add_argument("--quiet", action="store_true")
    st.set_defaults(func=_cmd_study)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        print("zoo: error: --jobs must be >= 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ZooError as e:
        print(f"zoo: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever it quotes
        return 2
    except BrokenPipeError:  # output piped into `head`: stop quietly, like other command-line tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full, permission denied, read-only file system: one line
        print(f"zoo: error: {' '.join(os_error_line(e, f'zoo {args.command}').split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
