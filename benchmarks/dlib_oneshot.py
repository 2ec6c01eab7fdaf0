"""One-shot pruning of dlib's pretrained face ResNet on real faces (Olivetti), no retraining.

Inner channels of every residual block (conv1 outputs = conv2 inputs) are pruned physically at
sparsity 0.1 … 0.5 by each CNN-capable criterion: FACES' norm-scale rule (|affine scale a| = network
slimming), L1/L2 filter magnitude, random, Taylor, NViT-style normalised Taylor, ViT-Slim soft masks and
Torch-Pruning's magnitude. Data-driven criteria calibrate on identities 0–29 (teacher = the dense
model, loss = 1 − cos); every model is evaluated on identities 30–39: pair AUC over all 4,950 pairs and
10-fold verification accuracy on 450 genuine + 450 impostor pairs.

    python benchmarks/dlib_oneshot.py [--data ../shared/data] [--criteria faces,l1,random] [--seeds 3]
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch
from cli_args import count, data_folder, float_list, name_list

from corecompress.tools import measure
from corecompress.plugin.loading import load_plugins
from corecompress.pruning import make_plan
from corecompress.pruning.physical import apply_physical
from corecompress.testing.contracts import fake_context

SEEDED = {"random"}
DATA = ("olivetti/olivettifaces.mat", "face-api-resnet")  # under --data
GLOBAL = {"nvit"}  # NViT ranks all blocks together with one threshold (per-block floor 10 %)


def evaluate(model, x, labels):
    from corecompress_facekit.evaluation.roc import all_pairs, evaluate_roc
    from corecompress_facekit.evaluation.verification import evaluate_verification

    with torch.no_grad():
        emb = torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)]).numpy()
        emb_f = torch.cat([model(x[i:i + 50].flip(-1)) for i in range(0, len(x), 50)]).numpy()
    pairs, same = all_pairs(labels)
    e = (emb + emb_f)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    auc = evaluate_roc(np.sum(e[pairs[:, 0]] * e[pairs[:, 1]], axis=1), same).auc
    rng = np.random.default_rng(0)
    gen, imp = pairs[same], pairs[~same]
    imp = imp[rng.choice(len(imp), len(gen), replace=False)]
    inter = np.empty((2 * len(gen), 2), np.int64)
    inter[0::2], inter[1::2] = gen, imp
    issame = np.tile([True, False], len(gen))
    acc = evaluate_verification(emb[inter.reshape(-1)], issame, emb_f[inter.reshape(-1)]).accuracy_mean_pct
    return auc, acc


def main() -> None:
    reg = load_plugins().registry
    ap = argparse.ArgumentParser()
    # string defaults go through type= too, so a missing default data folder is the same one-line error
    ap.add_argument("--data", type=data_folder(*DATA), default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help=f"folder holding {' and '.join(DATA)}")
    ap.add_argument("--criteria", type=name_list(reg.names("importance")),
                    default="faces,l1,l2,random,taylor,nvit,vit_slim,tp_magnitude", help="registered importance names")
    ap.add_argument("--sparsities", type=float_list(0.0, 1.0, high_open=True), default="0.1,0.2,0.3,0.4,0.5",
                    help="comma-separated, each in [0, 1)")
    ap.add_argument("--seeds", type=count(1), default=3, help="seeds for the random criterion")
    ap.add_argument("--threads", type=count(1), default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from corecompress_facekit.data.formats.olivetti import load_olivetti
    from corecompress_facekit.models.dlib_resnet import preprocess_grey64

    mat, weights = (args.data / entry for entry in DATA)
    images, labels = load_olivetti(mat)
    x = preprocess_grey64(images)
    held = labels >= 30
    x_eval, y_eval = x[held], labels[held]
    comp = reg.get("model", "dlib_resnet")
    spec = comp.create(comp.parse({"weights": str(weights)}, "model"))
    dense = spec.build().eval()
    calib_idx = np.flatnonzero(~held)[np.random.default_rng(0).permutation(300)[:64]]
    batches = [{"image": x[calib_idx[i:i + 16]], "label": torch.as_tensor(labels[calib_idx[i:i + 16]]),
                "index": torch.as_tensor(calib_idx[i:i + 16])} for i in range(0, 64, 16)]
    groups = spec.prunable_groups(dense, ("filters",))
    base_auc, base_acc = evaluate(dense, x_eval, y_eval)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"dense: AUC {base_auc:.4f}, verification {base_acc:.2f} %, {measure.count_parameters(dense) / 1e6:.2f} M params,"
          f" {measure.count_macs(dense, (3, 150, 150)) / 1e6:.1f} M MACs (held-out identities 30-39)")
    print("| criterion | sparsity | params | MACs | AUC | verification acc. % | scoring s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.criteria:
        icomp = reg.get("importance", name)
        seeds = range(args.seeds) if name in SEEDED else [0]
        scored = []  # scores do not depend on the sparsity: score once per seed
        for seed in seeds:
            ctx = fake_context(seed=seed, teacher=dense, batches=batches, embedding_size=128)
            importance = icomp.create(icomp.parse({}, "importance"))
            start = time.perf_counter()
            scores = importance.score(dense, groups, ctx)
            scored.append((scores, time.perf_counter() - start))
        for s in args.sparsities:
            rows = []
            for scores, took in scored:
                scope = "global" if name in GLOBAL else "local"
                plan = make_plan(scores, groups, s, scope=scope, min_keep_fraction=0.1)
                pruned = apply_physical(copy.deepcopy(dense), groups, plan)
                rows.append((*evaluate(pruned, x_eval, y_eval), took))
            auc = np.array([r[0] for r in rows])
            acc = np.array([r[1] for r in rows])
            spread = f" ± {auc.std(ddof=1):.4f}" if len(rows) > 1 else ""
            aspread = f" ± {acc.std(ddof=1):.2f}" if len(rows) > 1 else ""
            print(f"| {name}{' (global)' if name in GLOBAL else ''} | {s} | {measure.count_parameters(pruned) / 1e6:.2f} M | "
                  f"{measure.count_macs(pruned, (3, 150, 150)) / 1e6:.1f} M | {auc.mean():.4f}{spread} | "
                  f"{acc.mean():.2f}{aspread} | {np.mean([r[2] for r in rows]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
