"""Does the data pipeline keep up? RecordIO → decode → samples → batches, and the start-up of a huge index.

(a) Writes its own ``.rec`` of ``--images`` 112×112 JPEGs (synthetic faces from the project's renderer,
    each shifted and tinted so no two are the same) to a temporary folder, then measures, in rounds with
    the order rotating: the decode-only limit (JPEG bytes already in memory → uint8 array, this process)
    and the training loop's own loader (``RecordIOData.train()`` through ``training._batches`` and
    ``training._to_device``: read, decode, collate to uint8 batches of ``--batch``, then normalise on
    the run's device — here the CPU, so that cost is counted in this process) with each of ``--workers``
    worker counts; the same uint8 batches without the normalisation (what the CPU does in a GPU run,
    where the normalisation is GPU work); and the float path it replaced (normalised float batches
    built by the loader, ``training.DEVICE_NORMALIZE`` off).
    Reported (medians of the rounds): images/s and, per worker, the loader's rate over the limit (goal
    ≥ 0.9; with 0 workers the loader runs in this process); and, since a shared machine's load skews
    wall-clock rates, images per CPU-second (this process and its workers) over the limit's — the share
    of the CPU work that is decoding, whatever else runs on the machine.
(b) Writes a ``.rec``/``.idx`` of ``--records`` header-only records (no images; about 50 bytes a record
    on disk, deleted at the end) and times the dataset's start-up (index parsed, labels of every image
    read): cold (empty label cache, the files' pages dropped from the OS cache where the platform
    allows) and cached (the second start). Goals: ≤ 10 s cold, ≤ 1 s cached.

    python benchmarks/data_pipeline.py [--images 20000] [--batch 256] [--workers 0,1,2] [--rounds 3]
                                       [--records 5800000] [--only ab]
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from cli_args import count, letters


def worker_counts(text: str) -> list[int]:
    """Comma-separated worker counts, each in [0, 64]."""
    parse = count(0, 64)
    values = [parse(item.strip()) for item in text.split(",")]
    return list(dict.fromkeys(values))


# ------------------------------------------------------------------------------------------ (a) throughput
def synthetic_jpegs(count_: int, size: int = 112, distinct: int = 400) -> list[bytes]:
    """``count_`` JPEGs: ``distinct`` rendered faces, each use shifted by a few pixels and tinted."""
    from corecompress_facekit.data.formats._images import encode_image
    from corecompress_facekit.data.synthetic import SyntheticFaceConfig, SyntheticFaces

    faces = SyntheticFaces(SyntheticFaceConfig(num_identities=distinct // 10, images_per_identity=10, image_size=size))
    rendered = [faces.render(i) for i in range(len(faces))]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count_):
        shift = rng.integers(-4, 5, size=2)
        gain = rng.uniform(0.85, 1.15, size=3)
        image = np.roll(rendered[i % len(rendered)], tuple(shift), axis=(0, 1)) * gain
        out.append(encode_image(np.clip(image, 0, 255).astype(np.uint8), "JPEG", 95))
    return out


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader's workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_decode_limit(payloads: list[bytes]) -> tuple[float, float]:
    """(images/s, images per CPU-second) of decoding alone."""
    from corecompress_facekit.data.formats._images import decode_image_bytes

    start, cpu = time.perf_counter(), cpu_seconds()
    for payload in payloads:
        decode_image_bytes(payload, "benchmark")
    return len(payloads) / (time.perf_counter() - start), len(payloads) / (cpu_seconds() - cpu)


def time_pipeline(data_dir: Path, workers: int, batch: int, path: str = "u") -> tuple[float, float]:
    """(images/s after the first batch, images per CPU-second of the whole epoch, workers included)
    of the training loop's loader. ``path``: "u" uint8 batches normalised on the device (the CPU) as the
    loop does; "r" the same uint8 batches not normalised (the CPU's share of a GPU run); "f" float batches."""
    import torch

    from corecompress.config.recipe import TrainSection
    from corecompress.engine import training
    from corecompress_facekit.datasets import RecordIOData, RecordIOOptions

    cpu, device = cpu_seconds(), torch.device("cpu")
    training.DEVICE_NORMALIZE = path != "f"
    dataset = RecordIOData(RecordIOOptions(path=str(data_dir))).train()
    read, normalize = training._train_view(dataset)
    assert (normalize is not None) == (path != "f")
    normalize = None if path == "r" else normalize
    section = TrainSection(steps=1, batch_size=batch, num_workers=workers)
    batches, _lo, _hi = training._batches(read, section, seed=0, start_step=0, global_batch=batch, rank=0, world=1)
    training._to_device(next(batches), device, normalize)
    timed = len(dataset) // batch - 1
    start = time.perf_counter()
    for _ in range(timed):
        images = training._to_device(next(batches), device, normalize)["image"]
        assert images.dtype == (torch.uint8 if path == "r" else torch.float32)
    seconds = time.perf_counter() - start
    del batches, images  # stops and joins the workers, so their CPU time is counted
    gc.collect()
    training.DEVICE_NORMALIZE = True
    return timed * batch / seconds, (timed + 1) * batch / (cpu_seconds() - cpu)


def throughput(args: argparse.Namespace, folder: Path) -> list[str]:
    from corecompress_facekit.data.formats.recordio import RecordIODataset, write_recordio

    began = time.perf_counter()
    jpegs = synthetic_jpegs(args.images)
    write_recordio(folder / "faces", jpegs, [i // 20 for i in range(args.images)])
    print(f"(a) wrote {args.images} JPEGs ({sum(map(len, jpegs)) / len(jpegs) / 1024:.1f} KiB each) "
          f"in {time.perf_counter() - began:.1f} s")
    dataset = RecordIODataset(folder / "faces")
    payloads = [dataset.read_record(int(key))[1] for key in dataset.image_keys]
    configs = ["limit"] + [f"{path}{w}" for w in args.workers for path in ("u", "r", "f")]
    rates: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    for round_ in range(args.rounds):
        order = configs[round_ % len(configs):] + configs[:round_ % len(configs)]
        for config in order:
            rates[config].append(time_decode_limit(payloads) if config == "limit"
                                 else time_pipeline(folder / "faces", int(config[1:]), args.batch, config[0]))
    limit, limit_cpu = (statistics.median(r[i] for r in rates["limit"]) for i in (0, 1))
    rows = [f"| decode-only limit (this process) | {limit:,.0f} | — | — | {limit_cpu:,.0f} | — |"]
    for w in args.workers:
        for path, what in (("u", "uint8 batches, normalised on the device (CPU)"),
                           ("r", "uint8 batches, not normalised (CPU side of a GPU run)"),
                           ("f", "float batches (before)")):
            rate, per_cpu = (statistics.median(r[i] for r in rates[f"{path}{w}"]) for i in (0, 1))
            per_worker = rate / limit / max(w, 1)
            mark = "✓" if per_cpu >= 0.9 * limit_cpu else "✗"
            rows.append(f"| loader, {w} worker{'s' if w != 1 else ''}, {what} | {rate:,.0f} | {rate / limit:.2f} | "
                        f"{per_worker:.2f} | {per_cpu:,.0f} | {per_cpu / limit_cpu:.2f} {mark} |")
    head = (f"| (a) batch {args.batch}, {args.images} JPEGs, median of {args.rounds} rounds | images/s | vs limit | "
            "per worker vs limit | images per CPU-second | CPU efficiency vs limit (goal ≥ 0.9) |")
    return [head, "|---|---:|---:|---:|---:|---:|"] + rows


# ------------------------------------------------------------------------------------------ (b) start-up
def write_header_only_set(folder: Path, records: int, classes: int = 85_742) -> None:
    """Meta record 0 + ``records`` image records with no image bytes: magic, lrec, <IfQQ> header."""
    folder.mkdir(parents=True)
    n = records
    words = np.zeros((n + 1, 10), dtype="<u4")  # magic, lrec, flag, label, id (2), id2 (2), 2 label floats
    words[:, 0] = 0xCED7230A
    words[1:, 1] = 24
    labels = (np.arange(n, dtype=np.int64) * classes // n).astype(np.float32)
    words[1:, 3] = labels.view("<u4")
    words[1:, 4] = np.arange(1, n + 1, dtype=np.uint32)
    words[0, 1], words[0, 2] = 32, 2  # meta: flag 2, label [n + 1, n + 1]
    words[0, 3] = words[0, 8] = words[0, 9] = np.float32(n + 1).view("<u4")
    sizes = np.full(n + 1, 32, dtype=np.int64)
    sizes[0] = 40
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    with open(folder / "train.rec", "wb") as rec:
        rec.write(words[0].tobytes())
        rec.write(np.ascontiguousarray(words[1:, :8]).tobytes())
    lines = np.char.add(np.char.add(np.arange(n + 1).astype(str), "\t"), offsets.astype(str))
    (folder / "train.idx").write_text("\n".join(lines.tolist()) + "\n", encoding="ascii")
    (folder / "property").write_text(f"{classes},112,112\n", encoding="ascii")


def drop_from_os_cache(*paths: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def time_startup(folder: Path, cache: Path) -> float:
    from corecompress_facekit.data.formats.recordio import RecordIODataset

    start = time.perf_counter()
    dataset = RecordIODataset(folder, cache_dir=cache)
    assert dataset.labels.size == len(dataset)
    return time.perf_counter() - start


def startup(args: argparse.Namespace, folder: Path) -> list[str]:
    began = time.perf_counter()
    data = folder / "index"
    write_header_only_set(data, args.records)
    size = sum(p.stat().st_size for p in data.iterdir())
    print(f"(b) wrote {args.records:,} header-only records ({size / 2**20:.0f} MiB) in {time.perf_counter() - began:.1f} s")
    rows = ["| (b) start-up of %s records (index + labels) | seconds | goal |" % f"{args.records:,}", "|---|---:|---:|"]
    dropped = drop_from_os_cache(data / "train.rec", data / "train.idx")
    cold = time_startup(data, folder / "cache")
    what = "cold: empty label cache, files dropped from the OS cache" if dropped else "cold: empty label cache"
    rows.append(f"| {what} | {cold:.2f} | ≤ 10 {'✓' if cold <= 10 else '✗'} |")
    warm_files = time_startup(data, folder / "cache-2")
    rows.append(f"| cold label cache, files in the OS cache | {warm_files:.2f} | ≤ 10 {'✓' if warm_files <= 10 else '✗'} |")
    cached = statistics.median(time_startup(data, folder / "cache") for _ in range(3))
    rows.append(f"| cached (median of 3) | {cached:.2f} | ≤ 1 {'✓' if cached <= 1 else '✗'} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", type=count(512), default=20_000, help="JPEGs in the throughput set")
    ap.add_argument("--batch", type=count(1), default=256)
    ap.add_argument("--workers", type=worker_counts, default=[0, 1, 2], help="worker counts, e.g. 0,1,2")
    ap.add_argument("--rounds", type=count(1), default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--records", type=count(2), default=5_800_000, help="records of the start-up index")
    ap.add_argument("--only", type=letters("ab"), default=["a", "b"], help="parts to run: a, b or ab")
    args = ap.parse_args()
    if args.batch * 2 > args.images:
        ap.error(f"argument --batch: {args.batch} leaves fewer than 2 batches of --images {args.images}")

    import torch

    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, fp32; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="data-pipeline-") as tmp:
        tables = []
        if "a" in args.only:
            tables.append(throughput(args, Path(tmp)))
        if "b" in args.only:
            tables.append(startup(args, Path(tmp)))
    for table in tables:
        print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
