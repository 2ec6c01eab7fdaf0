"""Face models on this CPU: SwinFace-T size and speed, and dlib's ResNet on real Olivetti faces.

    python benchmarks/face_models.py [--threads 2] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from cli_args import count, directory

from corecompress.tools import measure


def swinface_t(threads: int) -> None:
    from corecompress_facekit.models.swinface import build_swinface

    model = build_swinface("swin_t").eval()
    params = measure.count_parameters(model)
    macs = measure.count_macs(model, (3, 112, 112))
    speed = measure.measure_throughput(model, (3, 112, 112), batch_size=32, threads=threads, repeats=10)
    print(f"SwinFace-T: {params / 1e6:.2f} M params, {macs / 1e9:.3f} GMACs at 112x112, "
          f"{speed['images_per_s']:.1f} images/s at batch 32 ({threads} threads, median of {speed['repeats']})")


def dlib_olivetti(data: Path, threads: int) -> None:
    from corecompress_facekit.data.formats.olivetti import load_olivetti
    from corecompress_facekit.evaluation.roc import all_pairs, evaluate_roc
    from corecompress_facekit.models.dlib_resnet import load_dlib_resnet, preprocess_grey64

    mat, weights = data / "olivetti" / "olivettifaces.mat", data / "face-api-resnet"
    if not mat.exists() or not weights.exists():
        print(f"dlib/Olivetti skipped: missing {mat if not mat.exists() else weights}")
        return
    images, labels = load_olivetti(mat)
    model = load_dlib_resnet(weights).eval()
    x = preprocess_grey64(images)
    with torch.no_grad():
        emb = torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)]).numpy()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    pairs, same = all_pairs(labels)
    scores = np.sum(emb[pairs[:, 0]] * emb[pairs[:, 1]], axis=1)
    roc = evaluate_roc(scores, same)
    balanced = np.max(0.5 * (roc.curve.tar + 1 - roc.curve.far))
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nn_acc = float(np.mean(labels[sims.argmax(1)] == labels))
    speed = measure.measure_throughput(model, (3, 150, 150), batch_size=1, threads=threads, repeats=10)
    print(f"dlib ResNet on Olivetti (400 images, {len(scores)} pairs): AUC {roc.auc:.4f}, EER {100 * roc.eer:.2f} %, "
          f"best balanced verification accuracy {100 * balanced:.2f} %, 1-NN identification {100 * nn_acc:.1f} %; "
          f"{measure.count_parameters(model) / 1e6:.2f} M params, {1000 * speed['median_s']:.1f} ms/image at batch 1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=count(1), default=2)
    # a --data given must exist; the default (a Path, so type= does not check it) may be absent: dlib is skipped
    ap.add_argument("--data", type=directory, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {platform.processor()}, torch {torch.__version__}, {args.threads} threads")
    swinface_t(args.threads)
    dlib_olivetti(args.data, args.threads)


if __name__ == "__main__":
    main()
