"""Benchmarks, printed as ratios measured in one run.

`python -m ipg_gnn.tools.bench capture` times, on one batch of real MNIST digits, the plain forward
pass and the IPG capture of each target model in each sparsity mode (same batch, same process,
median of repeats), and measures the peak memory of building a 10,000-graph IPG dataset (5,000
full-MNIST test inputs, benign + FGSM) in a child process. It also times the static capture of
a full-width CIFAR ResNet-18 (3x32x32 inputs, 2 basic blocks per stage) against its plain
forward on 256 inputs. The last line is one JSON object. Model weights are freshly initialised
and ResNet-18 inputs random: neither changes the cost of a capture.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ipg_gnn.data import mnist, mnist_subset
from ipg_gnn.provenance import CaptureConfig, IPGCapture
from ipg_gnn.targets import MLP, SmallCNN, SmallResNet
from ipg_gnn.targets.models import BasicBlock

MODELS: dict[str, tuple[Callable[[], nn.Module], bool]] = {
    "mlp": (lambda: MLP((1, 28, 28), 10), False),
    "mlp_with_input": (lambda: MLP((1, 28, 28), 10), True),
    "cnn": (lambda: SmallCNN((1, 28, 28), 10), False),
    "resnet": (lambda: SmallResNet((1, 28, 28), 10), False),
}
# Dense mode with the 784 input pixels as nodes stores 274,400 edges per graph: left out.
MODES = {"mlp_with_input": ("static", "dynamic")}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakRSS:
    """Samples this process's resident memory every millisecond while active."""

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _paired_median_ms(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median wall time of two functions timed alternately, so slow drifts of the machine hit
    both alike."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def bench_capture(x: torch.Tensor, calibration: torch.Tensor, repeats: int, k: int) -> dict:
    """Forward vs capture timings for every model and mode on the batch `x`."""
    results: dict[str, dict] = {}
    for name, (make, include_input) in MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        forward = torch.no_grad()(model)
        results[name] = {}
        for mode in MODES.get(name, ("static", "dynamic", "dense")):
            config = CaptureConfig(mode=mode, k=k, include_input=include_input)
            capturer = IPGCapture(model, x[:1], config)
            if mode == "static":
                capturer.calibrate(calibration)
            with _PeakRSS() as rss:  # a separate run: the sampler thread would skew timings
                batch = capturer(x)
            edges = int(batch.contribution.shape[1])
            output_mb = (
                sum(
                    t.numel() * t.element_size()
                    for t in (batch.x, batch.contribution, batch.edge_index, batch.weight)
                )
                / 2**20
            )
            del batch
            forward_ms, capture_ms = _paired_median_ms(
                lambda f=forward: f(x), lambda c=capturer: c(x), repeats
            )
            results[name][mode] = {
                "forward_ms": round(forward_ms, 3),
                "capture_ms": round(capture_ms, 3),
                "ratio": round(capture_ms / forward_ms, 2),
                "graphs_per_s": round(len(x) / capture_ms * 1000, 1),
                # RSS growth sampled during one capture: approximate, as the allocator may reuse
                # memory it already holds; output_mb is the exact size of the captured graphs.
                "peak_rss_mb": round(rss.peak - rss.base, 1),
                "output_mb": round(output_mb, 1),
                "nodes": int(capturer.plan.num_nodes),
                "edges_per_graph": edges,
            }
            print(
                f"{name:15s} {mode:8s} forward {forward_ms:8.2f} ms  capture {capture_ms:9.2f} ms"
                f"  ratio {capture_ms / forward_ms:7.2f}  "
                f"{results[name][mode]['graphs_per_s']:9.0f} graphs/s",
                flush=True,
            )
    return results


def resnet18(num_classes: int = 10) -> nn.Sequential:
    """CIFAR ResNet-18: 3x3 stem, widths 64-512, two basic blocks per stage, global pooling."""
    layers, c_in = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for i, width in enumerate((64, 128, 256, 512)):
        for j in range(2):
            layers.append(BasicBlock(c_in, width, stride=2 if i > 0 and j == 0 else 1))
            c_in = width
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )


def bench_resnet18(n_inputs: int, repeats: int, k: int) -> dict:
    """Static capture of a full-width ResNet-18 vs its plain forward on `n_inputs` inputs."""
    torch.manual_seed(0)
    model = resnet18().eval()
    x, calibration = torch.rand(n_inputs, 3, 32, 32), torch.rand(64, 3, 32, 32)
    start = time.perf_counter()
    capturer = IPGCapture(model, x[:1], CaptureConfig(mode="static", k=k, chunk_size=n_inputs))
    trace_s = time.perf_counter() - start
    capturer.calibrate(calibration)
    with _PeakRSS() as rss:
        batch = capturer(x)
    per_graph = sum(t[0].numel() * t.element_size() for t in (batch.x, batch.contribution))
    del batch
    forward_ms, capture_ms = _paired_median_ms(
        lambda: torch.no_grad()(model)(x), lambda: capturer(x), repeats
    )
    result = {
        "inputs": n_inputs,
        "trace_s": round(trace_s, 2),
        "forward_ms": round(forward_ms, 1),
        "capture_ms": round(capture_ms, 1),
        "ratio": round(capture_ms / forward_ms, 2),
        "graphs_per_s": round(n_inputs / capture_ms * 1000, 1),
        "nodes": int(capturer.plan.num_nodes),
        "bytes_per_graph": per_graph,  # node features + contributions; the topology is shared
        "peak_rss_mb": round(rss.peak - rss.base, 1),
    }
    print(f"resnet18 static: {result}", flush=True)
    return result


def _build_child(data_dir: str, n_inputs: int, out: str, queue: mp.Queue) -> None:
    """Build benign + FGSM IPGs of `n_inputs` MNIST test inputs with the static MLP capture."""
    from art.attacks.evasion import FastGradientMethod

    from ipg_gnn.attacks import Attack
    from ipg_gnn.graphs import IPGDataset, build_store, prepare_capture
    from ipg_gnn.objectives import AttackContrast

    data = mnist(data_dir)
    torch.manual_seed(0)
    model = MLP((1, 28, 28), 10).eval()
    images = data.test.subset(np.arange(n_inputs))
    start = time.perf_counter()
    capturer, _ = prepare_capture(model, out, CaptureConfig(), data.train.x[:500])
    attack = Attack("fgsm", functools.partial(FastGradientMethod, eps=0.15), progress=False)
    fgsm = AttackContrast("fgsm", attack, key="bench")
    index = np.arange(n_inputs)
    build_store(capturer, model, images, index, Path(out) / "benign", "test", "benign", None, 1000)
    build_store(capturer, model, images, index, Path(out) / "fgsm", "test", "fgsm", fgsm, 1000)
    n_graphs = len(IPGDataset(out, ["benign", "fgsm"]))
    queue.put(
        {
            "n_graphs": n_graphs,
            "seconds": round(time.perf_counter() - start, 2),
            "disk_mb": round(sum(p.stat().st_size for p in Path(out).rglob("*.pt")) / 2**20, 1),
        }
    )


def bench_dataset_build(data_dir: str, n_inputs: int = 5000) -> dict:
    """Peak resident memory of a child process building (and loading) 2 x `n_inputs` graphs."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as out:
        child = ctx.Process(target=_build_child, args=(data_dir, n_inputs, out, queue))
        child.start()
        result = queue.get()
        child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the dataset build failed (exit code {child.exitcode})")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {**result, "peak_rss_mb": round(peak_kb / 1024, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m ipg_gnn.tools.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=["capture"])
    parser.add_argument("--batch", type=int, default=1000, help="inputs per timed batch")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--k", type=int, default=8, help="edges kept per unit")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--data-dir",
        default="data",
        help="folder holding mnist/ (IDX files) for the 10,000-graph build",
    )
    parser.add_argument("--skip-build", action="store_true", help="skip the dataset build")
    parser.add_argument("--skip-resnet18", action="store_true", help="skip the ResNet-18 timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    digits = mnist_subset().train
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    x, calibration = digits.x[order[: args.batch]], digits.x[order[-500:]]
    report = {
        "batch": args.batch,
        "threads": args.threads,
        "k": args.k,
        "models": bench_capture(x, calibration, args.repeats, args.k),
    }
    if not args.skip_resnet18:
        report["resnet18"] = bench_resnet18(256, args.repeats, args.k)
    if not args.skip_build:
        report["dataset_build"] = bench_dataset_build(args.data_dir)
        print(f"10,000-graph build: {report['dataset_build']}", flush=True)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
