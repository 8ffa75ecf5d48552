"""Speed of :func:`tensorcomp.hosvd` and :func:`tensorcomp.cp` against the plain algorithm and TensorLy.

On activation-shaped float32 tensors (ReLU of a random low-rank field plus
noise, fixed seed). ``--section hosvd`` (the default), for each shape and
``eps``, times:

``tensorcomp``
    :func:`tensorcomp.hosvd` (ranks from ``eps``).
``plain``
    The paper's algorithm written out: a full SVD of every mode unfolding
    (``numpy.linalg.svd`` / ``torch.linalg.svd``, ``full_matrices=False``),
    truncation of each to the fewest singular vectors holding ``eps`` of the
    energy, then the core by mode products with the factors' transposes.
``tensorly_hosvd``
    ``tensorly.decomposition.tucker(x, rank, init="svd", n_iter_max=0)`` at
    the ranks tensorcomp chose: TensorLy's truncated SVD of every unfolding
    and its core, i.e. HOSVD without any HOOI sweep (the same algorithm).
``tensorly_tucker``
    The same with ``n_iter_max=2, tol=0``: HOSVD followed by two HOOI sweeps
    (slower, and a slightly smaller error than any HOSVD).

``--section cp``, for each shape, times :func:`tensorcomp.cp` at each fixed
``--ranks`` against ``tensorly.decomposition.parafac(x, rank)`` with
TensorLy's defaults (``init="svd"``, ``n_iter_max=100``, ``tol=1e-8``;
``random_state=0`` for the random columns its init gives a mode shorter
than the rank), and the rank search ``tensorcomp.cp(x, eps)`` against
``parafac`` at the rank the search found.

Times are medians over ``--repeats`` runs after one warm-up run (the CP
section also records each call's CPU time, which a busy machine does not
inflate); errors are relative Frobenius errors ``||x - x_hat|| / ||x||``
computed in float64.

Run ``python -m benchmarks.decomposition_speed --help`` for the options.
Writes ``results.csv``, ``results.json`` and ``speedup.png`` (HOSVD) or
``cp.csv``, ``cp.json`` and ``cp_speedup.png`` (CP) to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac
from tensorly.decomposition import tucker as tensorly_tucker

import tensorcomp

from . import _report
from ._cli import Parser, UsageError, check_eps, check_positive, run_main

DEFAULT_SHAPES = ("128x512x4x4", "128x256x8x8", "128x128x16x16", "64x32x56x56")
EPS_VALUES = (0.8, 0.9)
CP_SHAPES = ("64x32x16x16", "128x64x8x8")
CP_RANKS = (4, 8)
CP_EPS = (0.8,)
HOOI_SWEEPS = 2
OUT = Path(__file__).parent / "results" / "decomposition_speed"


# ---------------------------------------------------------------------- data


def activation(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """ReLU of a smooth random low-rank field plus noise, float32, like a conv layer's output.

    The field is a Tucker tensor of ranks (8, 8, 3, 3) (capped at the shape)
    whose spatial factors are low-frequency cosines; Gaussian noise of half
    the field's standard deviation is added before the ReLU.
    """
    rng = np.random.default_rng(seed)
    batch, channels, height, width = shape
    ranks = (min(batch, 8), min(channels, 8), min(height, 3), min(width, 3))

    def spatial(n: int, r: int) -> np.ndarray:
        grid = np.linspace(0.0, np.pi, n)[:, None]
        return np.cos(grid * np.arange(r)[None, :] + rng.uniform(0, np.pi, r))

    factors = [
        rng.standard_normal((batch, ranks[0])),
        rng.standard_normal((channels, ranks[1])),
        spatial(height, ranks[2]),
        spatial(width, ranks[3]),
    ]
    field = rng.standard_normal(ranks)
    for mode, factor in enumerate(factors):
        field = np.moveaxis(np.tensordot(factor, field, axes=([1], [mode])), 0, mode)
    field /= field.std()
    noisy = field + 0.5 * rng.standard_normal(shape)
    return np.maximum(noisy, 0.0).astype(np.float32)


# ----------------------------------------------------------- the plain algorithm


def _energy_rank(singular_values: np.ndarray, eps: float) -> int:
    energy = np.asarray(singular_values, dtype=np.float64) ** 2
    kept = np.cumsum(energy) / energy.sum()
    return int(min(np.searchsorted(kept, eps) + 1, len(energy)))


def plain_hosvd_numpy(x: np.ndarray, eps: float) -> tuple[np.ndarray, list[np.ndarray]]:
    factors = []
    for mode in range(x.ndim):
        unfolding = np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)
        u, s, _ = np.linalg.svd(unfolding, full_matrices=False)
        factors.append(u[:, : _energy_rank(s, eps)])
    core = x
    for mode, u in enumerate(factors):
        core = np.moveaxis(np.tensordot(u.T, core, axes=([1], [mode])), 0, mode)
    return core, factors


def plain_hosvd_torch(x: Any, eps: float) -> tuple[Any, list[Any]]:
    import torch

    factors = []
    for mode in range(x.ndim):
        unfolding = torch.movedim(x, mode, 0).reshape(x.shape[mode], -1)
        u, s, _ = torch.linalg.svd(unfolding, full_matrices=False)
        factors.append(u[:, : _energy_rank(s.cpu().numpy(), eps)])
    core = x
    for mode, u in enumerate(factors):
        core = torch.movedim(torch.tensordot(u.T, core, dims=([1], [mode])), 0, mode)
    return core, factors


# ----------------------------------------------------------------- measuring


def _to_numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def relative_error(x: Any, x_hat: Any) -> float:
    x, x_hat = _to_numpy(x).astype(np.float64), _to_numpy(x_hat).astype(np.float64)
    return float(np.linalg.norm(x - x_hat) / np.linalg.norm(x))


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, float, Any]:
    """Median and minimum seconds of ``repeats`` calls after one warm-up, and the last result."""
    result = fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def timed_with_cpu(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, float, float, Any]:
    """As :func:`timed`, plus the median CPU time of this process per call.

    With every library held to one thread, CPU time is the work a call does
    whatever else the machine runs; wall time also counts waiting for a core.
    """
    result = fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), min(wall), statistics.median(cpu), result


def run_case(x: Any, backend: str, eps: float, repeats: int, sync: Callable[[], None]) -> dict[str, Any]:
    shape = tuple(x.shape)
    t_ours, t_ours_min, ours = timed(lambda: tensorcomp.hosvd(x, eps=eps), repeats, sync)
    ranks = ours.rank

    plain = plain_hosvd_torch if backend == "torch" else plain_hosvd_numpy
    t_plain, t_plain_min, (plain_core, plain_factors) = timed(lambda: plain(x, eps), repeats, sync)
    plain_ranks = tuple(int(u.shape[1]) for u in plain_factors)

    tl_backend = "pytorch" if backend == "torch" else "numpy"
    with tl.backend_context(tl_backend):

        def tensorly_fn(sweeps: int) -> Callable[[], Any]:
            return lambda: tensorly_tucker(x, rank=list(ranks), init="svd", n_iter_max=sweeps, tol=0)

        t_tlh, t_tlh_min, tlh = timed(tensorly_fn(0), repeats, sync)
        t_tlt, t_tlt_min, tlt = timed(tensorly_fn(HOOI_SWEEPS), repeats, sync)
        tlh_hat = tl.tucker_to_tensor(tlh)
        tlt_hat = tl.tucker_to_tensor(tlt)
        plain_hat = tl.tucker_to_tensor((plain_core, plain_factors))

    return {
        "backend": backend,
        "device": str(getattr(x, "device", "cpu")),
        "shape": "x".join(map(str, shape)),
        "eps": eps,
        "ranks": "x".join(map(str, ranks)),
        "plain_ranks": "x".join(map(str, plain_ranks)),
        "ranks_match": plain_ranks == ranks,
        "explained_variance": round(ours.explained_variance, 6),
        "time_tensorcomp_s": t_ours,
        "time_plain_s": t_plain,
        "time_tensorly_hosvd_s": t_tlh,
        "time_tensorly_tucker_s": t_tlt,
        "min_time_tensorcomp_s": t_ours_min,
        "min_time_plain_s": t_plain_min,
        "min_time_tensorly_hosvd_s": t_tlh_min,
        "min_time_tensorly_tucker_s": t_tlt_min,
        "speedup_vs_plain": t_plain / t_ours,
        "speedup_vs_tensorly_hosvd": t_tlh / t_ours,
        "speedup_vs_tensorly_tucker": t_tlt / t_ours,
        "error_tensorcomp": relative_error(x, ours.to_tensor()),
        "error_plain": relative_error(x, plain_hat),
        "error_tensorly_hosvd": relative_error(x, tlh_hat),
        "error_tensorly_tucker": relative_error(x, tlt_hat),
    }


def _parafac(x: Any, rank: int) -> Callable[[], Any]:
    """TensorLy's parafac with its defaults, on ``x``'s backend.

    Its SVD init fills the columns a mode shorter than the rank lacks at
    random (and warns): ``random_state=0`` makes those runs repeatable.
    """

    def call() -> Any:
        with tl.backend_context("pytorch" if hasattr(x, "detach") else "numpy"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return parafac(x, rank, init="svd", n_iter_max=100, random_state=0)

    return call


def _cp_reconstruction(x: Any, cp_tensor: Any) -> Any:
    with tl.backend_context("pytorch" if hasattr(x, "detach") else "numpy"):
        return tl.cp_to_tensor(cp_tensor)


def run_cp_case(x: Any, backend: str, task: dict[str, Any], repeats: int, sync: Callable[[], None]) -> dict[str, Any]:
    """``tensorcomp.cp(x, **task)`` against parafac at the same rank (the searched one for an ``eps`` task)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a search that stops at max_rank is reported, not raised
        t_ours, t_ours_min, cpu_ours, ours = timed_with_cpu(lambda: tensorcomp.cp(x, **task), repeats, sync)
    rank = ours.rank
    t_ref, t_ref_min, cpu_ref, reference = timed_with_cpu(_parafac(x, rank), repeats, sync)
    error_ours = relative_error(x, ours.to_tensor())
    error_ref = relative_error(x, _cp_reconstruction(x, reference))
    (name, value), = task.items()
    return {
        "backend": backend,
        "device": str(getattr(x, "device", "cpu")),
        "shape": "x".join(map(str, tuple(x.shape))),
        "task": f"{name}={value}",
        "rank": rank,
        "explained_variance": round(ours.explained_variance, 6),
        "explained_variance_parafac": round(1.0 - error_ref**2, 6),
        "time_tensorcomp_s": t_ours,
        "time_parafac_s": t_ref,
        "min_time_tensorcomp_s": t_ours_min,
        "min_time_parafac_s": t_ref_min,
        "speedup_vs_parafac": t_ref / t_ours,
        "cpu_time_tensorcomp_s": cpu_ours,
        "cpu_time_parafac_s": cpu_ref,
        "cpu_speedup_vs_parafac": cpu_ref / cpu_ours,
        "error_tensorcomp": error_ours,
        "error_parafac": error_ref,
        "error_ratio": error_ours / error_ref,
    }


# -------------------------------------------------------------------- output


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["backend", "shape", "eps", "ranks", "same", "ours ms", "plain ms", "tl-hosvd", "tl-hooi",
              "x plain", "x tl-h", "x tl-t", "err ours", "plain", "tl-h", "tl-t"]
    lines = [
        [r["backend"], r["shape"], str(r["eps"]), r["ranks"], "yes" if r["ranks_match"] else "NO",
         *(f"{1e3 * r[k]:.1f}" for k in ("time_tensorcomp_s", "time_plain_s", "time_tensorly_hosvd_s", "time_tensorly_tucker_s")),
         *(f"{r[k]:.1f}" for k in ("speedup_vs_plain", "speedup_vs_tensorly_hosvd", "speedup_vs_tensorly_tucker")),
         *(f"{r[k]:.4f}" for k in ("error_tensorcomp", "error_plain", "error_tensorly_hosvd", "error_tensorly_tucker"))]
        for r in rows
    ]
    print(_report.text_table(header, lines, left=(0, 1, 3)))


def plot(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    plt = _report.pyplot()

    labels = [f"{r['backend']}\n{r['shape']}\neps={r['eps']}" for r in rows]
    series = [
        ("vs plain (full SVD)", "speedup_vs_plain"),
        ("vs tensorly HOSVD", "speedup_vs_tensorly_hosvd"),
        (f"vs tensorly Tucker ({HOOI_SWEEPS} HOOI sweeps)", "speedup_vs_tensorly_tucker"),
    ]
    width = 0.8 / len(series)
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(rows) + 2), 4.8))
    for i, (name, key) in enumerate(series):
        ax.bar(positions + (i - (len(series) - 1) / 2) * width, [r[key] for r in rows], width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(5.0, color="grey", linewidth=0.8, linestyle="--", label="5x")
    ax.set_yscale("log")
    ax.set_xticks(positions, labels, fontsize=7)
    ax.set_ylabel("speedup of tensorcomp.hosvd (median time ratio)")
    ax.set_title(f"HOSVD at identical ranks, float32 ({meta['cpu']}, {meta['cpu_cores']} cores)", fontsize=9)
    ax.legend(fontsize=8)
    _report.save_figure(fig, path)


def print_cp_table(rows: list[dict[str, Any]]) -> None:
    header = ["backend", "shape", "task", "rank", "ours ms", "parafac ms", "speedup", "cpu x",
              "err ours", "parafac", "ratio", "EV ours", "parafac"]
    lines = [
        [r["backend"], r["shape"], r["task"], str(r["rank"]),
         f"{1e3 * r['time_tensorcomp_s']:.1f}", f"{1e3 * r['time_parafac_s']:.1f}",
         f"{r['speedup_vs_parafac']:.1f}", f"{r['cpu_speedup_vs_parafac']:.1f}",
         f"{r['error_tensorcomp']:.4f}", f"{r['error_parafac']:.4f}", f"{r['error_ratio']:.3f}",
         f"{r['explained_variance']:.4f}", f"{r['explained_variance_parafac']:.4f}"]
        for r in rows
    ]
    print(_report.text_table(header, lines, left=(0, 1, 2)))


def plot_cp(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> None:
    plt = _report.pyplot()

    labels = [
        f"{r['backend']}\n{r['shape']}\n{r['task']}" + (f" search\nvs parafac at R={r['rank']}" if r["task"].startswith("eps") else "")
        for r in rows
    ]
    positions = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(rows) + 2), 4.8))
    bars = ax.bar(positions, [r["speedup_vs_parafac"] for r in rows], 0.6, label="tensorly parafac time / tensorcomp.cp time")
    for bar, r in zip(bars, rows):
        ax.annotate(f"err x{r['error_ratio']:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(10.0, color="grey", linewidth=0.8, linestyle="--", label="10x")
    ax.set_yscale("log")
    ax.set_xticks(positions, labels, fontsize=7)
    ax.set_ylabel("speedup of tensorcomp.cp (median time ratio)")
    ax.set_title(
        f"CP at the same rank as parafac (defaults), float32 ({meta['cpu']}, {meta['cpu_cores']} cores); "
        "label: error relative to parafac's",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    _report.save_figure(fig, path)


# ---------------------------------------------------------------------- main


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Give every method the same number of threads, restoring the previous counts on exit.

    NumPy and SciPy each ship their own OpenBLAS, whose idle threads spin;
    on a small machine shared with other work, two pools of spinning threads
    make timings erratic by an order of magnitude. One pinned count for
    NumPy's and SciPy's BLAS, OpenMP and torch keeps the comparison fair and repeatable.
    """
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None
    torch_threads = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=threads):
        if torch is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(torch_threads)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is written like 128x256x8x8; got {text!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs 4 positive sizes (B x C x H x W); got {text!r}")
    return shape


PROG = "python -m benchmarks.decomposition_speed"


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--section", choices=["hosvd", "cp"], default="hosvd",
        help="hosvd: tensorcomp.hosvd against a full-SVD HOSVD and TensorLy; "
             "cp: tensorcomp.cp at fixed ranks and its eps search against TensorLy's parafac")
    add("--repeats", type=int, default=3, help="timed runs per method, after one warm-up (median reported)")
    add("--shapes", type=parse_shape, nargs="+", metavar="BxCxHxW",
        help=f"activation shapes (default: {' '.join(DEFAULT_SHAPES)}; with --section cp: {' '.join(CP_SHAPES)})")
    add("--eps", type=float, nargs="+",
        help=f"hosvd: energy fractions kept per mode, cp: targets of the rank search, in (0, 1] "
             f"(default: {' '.join(map(str, EPS_VALUES))}; with --section cp: {' '.join(map(str, CP_EPS))})")
    add("--ranks", type=int, nargs="+", default=list(CP_RANKS), help="fixed CP ranks timed by --section cp")
    add("--backend", choices=["numpy", "torch", "both"], default="both", help="TensorLy backend of the inputs")
    add("--device", choices=["cpu", "cuda"], default="cpu", help="device of the torch tensors")
    add("--out", type=Path, default=OUT,
        help="folder for results.csv/json and speedup.png, or cp.csv/json and cp_speedup.png "
             "(default: benchmarks/results/decomposition_speed of this checkout)")
    add("--threads", type=int, default=1, help="BLAS/LAPACK/OpenMP threads for every method (0: as the libraries set them)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the timings; returns the exit status (2 for bad input, with a one-line message)."""
    return run_main(PROG, _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    cp = args.section == "cp"
    if args.shapes is None:
        args.shapes = list(CP_SHAPES if cp else DEFAULT_SHAPES)
    if args.eps is None:
        args.eps = list(CP_EPS if cp else EPS_VALUES)
    args.shapes = [parse_shape(s) if isinstance(s, str) else s for s in args.shapes]
    check_eps(args.eps)
    check_positive(repeats=args.repeats, ranks=min(args.ranks))
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0; got {args.threads}")
    with limit_threads(args.threads) if args.threads else contextlib.nullcontext():
        (run_cp if cp else run)(args)
    return 0


DATA = "ReLU(Tucker field of ranks (8,8,3,3), cosine spatial factors, + 0.5 sd Gaussian noise), float32, seed 0"


def _setup(args: argparse.Namespace) -> tuple[list[str], Callable[[], None], dict[str, Any]]:
    """The backends to run, the torch device's synchronisation and the run's metadata."""
    backends = ["numpy", "torch"] if args.backend == "both" else [args.backend]
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if "torch" in backends:
        import torch

        if args.device == "cuda":
            if not torch.cuda.is_available():
                raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
            sync = torch.cuda.synchronize

    meta = _report.machine_description(device=args.device, argv=args.argv)
    meta["command"] = " ".join(["python -m benchmarks.decomposition_speed", *map(shlex.quote, args.argv)])
    meta["repeats"] = args.repeats
    meta["threads"] = args.threads or "library defaults"
    meta["data"] = DATA
    return backends, sync, meta


def _inputs(args: argparse.Namespace, backend: str) -> Iterator[Any]:
    """The activation tensor of every shape, on ``backend`` (and ``--device`` for torch)."""
    for shape in args.shapes:
        data = activation(shape)
        if backend == "torch":
            import torch

            yield torch.from_numpy(data).to(args.device)
        else:
            yield data


def _sweep(
    args: argparse.Namespace,
    backends: Sequence[str],
    meta: dict[str, Any],
    sync: Callable[[], None],
    tasks: Sequence[Any],
    case: Callable[..., dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
    table: Callable[[list[dict[str, Any]]], None],
    stem: str,
    chart: tuple[Callable[..., None], str],
) -> list[dict[str, Any]]:
    """Run ``case(x, backend, task, repeats, sync)`` over every backend, shape and task, printing ``describe(row)``
    as each finishes; then print ``table(rows)`` and write ``<stem>.csv``/``.json`` and the chart under ``--out``."""
    meta["load_average_start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rows = []
    for backend in backends:
        for x in _inputs(args, backend):
            for task in tasks:
                row = case(x, backend, task, args.repeats, sync if backend == "torch" else (lambda: None))
                rows.append(row)
                print(f"{backend} {row['shape']} {describe(row)}", flush=True)
    meta["load_average_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())

    print()
    table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_table(args.out / stem, rows, meta)
    plot_fn, png = chart
    plot_fn(rows, args.out / png, meta)
    print(f"\nwrote {args.out}/{stem}.csv, {stem}.json, {png}")
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every method on every shape, eps and backend; write the tables and the chart; return the rows."""
    backends, sync, meta = _setup(args)
    meta["compared"] = (
        "tensorcomp.hosvd; plain = full SVD of each unfolding + energy truncation + core by mode products; "
        "tensorly_hosvd = tensorly.decomposition.tucker(init='svd', n_iter_max=0) at tensorcomp's ranks; "
        f"tensorly_tucker = same with n_iter_max={HOOI_SWEEPS}, tol=0"
    )

    def describe(row: dict[str, Any]) -> str:
        return (
            f"eps={row['eps']}: ranks {row['ranks']} "
            f"{1e3 * row['time_tensorcomp_s']:.1f} ms, x{row['speedup_vs_plain']:.1f} plain, "
            f"x{row['speedup_vs_tensorly_hosvd']:.1f} tensorly-hosvd, x{row['speedup_vs_tensorly_tucker']:.1f} tensorly-tucker"
        )

    return _sweep(args, backends, meta, sync, args.eps, run_case, describe, print_table, "results", (plot, "speedup.png"))


def run_cp(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time tensorcomp.cp and parafac at every rank, and the eps search, on every shape and backend; write the tables."""
    backends, sync, meta = _setup(args)
    meta["compared"] = (
        "tensorcomp.cp(x, rank=R) and tensorcomp.cp(x, eps) (its rank search) against "
        "tensorly.decomposition.parafac(x, R, init='svd', n_iter_max=100, random_state=0) (TensorLy's defaults: "
        "tol=1e-8, no normalisation, no line search; random_state only fills the init of modes shorter than R) "
        "at the same rank, for an eps task the rank the search found"
    )

    def describe(row: dict[str, Any]) -> str:
        return (
            f"{row['task']}: rank {row['rank']} {1e3 * row['time_tensorcomp_s']:.1f} ms "
            f"vs parafac {1e3 * row['time_parafac_s']:.1f} ms (x{row['speedup_vs_parafac']:.1f}), "
            f"error {row['error_tensorcomp']:.4f} vs {row['error_parafac']:.4f}"
        )

    tasks = [{"rank": r} for r in args.ranks] + [{"eps": e} for e in args.eps]
    return _sweep(args, backends, meta, sync, tasks, run_cp_case, describe, print_cp_table, "cp", (plot_cp, "cp_speedup.png"))


if __name__ == "__main__":
    sys.exit(main())
