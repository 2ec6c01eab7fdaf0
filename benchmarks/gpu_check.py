"""GPU check (issue 12, item 6): one run on one H100/H200-class GPU (≤ 8 minutes), one table, one JSON.

(a) SwinFace-T dense vs FACES 0.5 physical vs heads + MLP neurons + FACES channels at 50 % of the
    parameters, each with and without ``round_to: 8``: bf16 inference images/s at batch 1, 32, 256 and
    training-step images/s at batch 256, ratios vs dense, model-FLOPs utilisation vs the bf16 peak;
(b) an AdaDistill step, IResNet-50 teacher → MobileFaceNet student, batch 512, 85,742 classes, in the
    engine loop, vs the ArcFace step (ratio) and vs a hand-written loop (framework overhead, goal ≤ 3 %);
(c) masked ≡ physical on the device: fp32 ≤ 1e-5, bf16 ≤ 2e-2 (max relative error);
(d) the quickstart end to end (``corecompress run``), wall time.

    python benchmarks/gpu_check.py [--sections a,b,c,d] [--json PATH] [--force] [--device cuda] [--peak-tflops X]
    python benchmarks/gpu_check.py --cpu-smoke [--json PATH]   # the same code paths, tiny shapes, on the CPU

The JSON (default benchmarks/results/gpu_check.json, or gpu_check_cpu_smoke.json) is rewritten after every
section, so a run cut short keeps what it measured; an existing file is only replaced with --force. A
section that runs out of device memory or fails is recorded as such and the next one runs (exit code 1).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from cli_args import name_list, number

RESULTS = Path(__file__).resolve().parent / "results"
TITLES = {
    "a": "SwinFace dense vs pruned: speed, ratios, MFU",
    "b": "AdaDistill step vs ArcFace step vs hand-written loop",
    "c": "masked vs physical on the device",
    "d": "quickstart end to end",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (what the tests run)")
    ap.add_argument("--sections", type=name_list(TITLES), default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--json", type=Path, help="results file (default: benchmarks/results/gpu_check[_cpu_smoke].json)")
    ap.add_argument("--force", action="store_true", help="replace an existing --json file")
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N (the full check); --cpu-smoke uses the CPU")
    ap.add_argument("--peak-tflops", type=number(0.0, low_open=True),
                    help="the device's dense bf16 peak for MFU (default: from the table of known devices)")
    args = ap.parse_args(argv)
    args.sections = list(dict.fromkeys(args.sections))  # each once, in the order given
    if args.json is None:
        args.json = RESULTS / ("gpu_check_cpu_smoke.json" if args.cpu_smoke else "gpu_check.json")
    if args.json.exists() and not args.force:
        ap.error(f"argument --json: {args.json} exists; pass --force to replace it")
    if not args.json.parent.is_dir():
        ap.error(f"argument --json: folder {args.json.parent} is missing")
    args.device = _device(ap, args)
    return args


def _device(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """The ``torch.device`` to check: the CPU for --cpu-smoke, else the GPU --device names (exit 2 without one)."""
    import torch

    from corecompress.engine.devices import DeviceError, resolve_device

    if args.cpu_smoke:
        return torch.device("cpu")
    if not args.device.startswith("cuda"):
        ap.error(f"argument --device: the full check is for a GPU (cuda or cuda:N), got {args.device!r}; "
                 "use --cpu-smoke on a CPU")
    try:
        return resolve_device(args.device)
    except DeviceError as exc:
        ap.error(f"argument --device: {exc}; use --cpu-smoke on a CPU")


def _run_section(section: Any, env: Any, run: Callable[[Any], tuple[list, list[str]]]) -> None:
    """Run one section into ``section``: rows and notes, or "OOM" / "error: ..." (traceback on stderr)."""
    import torch

    from gpucheck.device import release_memory

    start = time.perf_counter()
    try:
        section.rows, section.notes = run(env)
        section.status = "ok"
    except torch.cuda.OutOfMemoryError:
        release_memory(env.device)
        section.status = "OOM"
    except Exception as exc:  # noqa: BLE001 - one failed section must not cost the others on a lent GPU
        traceback.print_exc(file=sys.stderr)
        section.status = f"error: {type(exc).__name__}: {exc}"
    section.seconds = time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from gpucheck import distill, equivalence, quickstart, swin_speed
    from gpucheck.context import CheckEnv
    from gpucheck.device import describe
    from gpucheck.precision import precision_keys
    from gpucheck.report import Section, table, write_json
    from gpucheck.shapes import FULL, SMOKE

    from corecompress.plugin.loading import load_plugins

    runs = {"a": swin_speed.run, "b": distill.run, "c": equivalence.run, "d": quickstart.run}
    shapes = SMOKE if args.cpu_smoke else FULL
    if shapes.threads is not None:
        torch.set_num_threads(shapes.threads)
    keys, framework_precision = precision_keys(shapes.precision)
    machine = describe(args.device, args.peak_tflops)
    settings = {"shapes": shapes.name, "sections": args.sections, "argv": sys.argv[1:],
                "precision": {"hand_written": shapes.precision, "framework_requested": shapes.precision,
                              "framework": framework_precision, "recipe_keys": keys}}
    print(f"device {machine['name']} ({machine['device']}), torch {machine['torch']}, CUDA build {machine['cuda_build']}; "
          f"shapes {shapes.name}; precision: hand-written {shapes.precision}, framework {framework_precision}",
          flush=True)
    sections: list[Section] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        env = CheckEnv(shapes, args.device, load_plugins(), machine["bf16_peak_tflops"], Path(tmp), keys,
                       framework_precision)
        for key in args.sections:
            section = Section(key, TITLES[key])
            sections.append(section)
            _run_section(section, env, runs[key])
            print(f"({key}) {section.title}: {section.status}, {section.seconds:.1f} s", flush=True)
            write_json(args.json, machine, {**settings, "seconds": time.perf_counter() - started}, sections)
    print(table(sections))
    print(f"total {time.perf_counter() - started:.1f} s; results in {args.json}")
    return 0 if all(s.status == "ok" for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
