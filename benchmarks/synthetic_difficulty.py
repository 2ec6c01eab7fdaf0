"""How hard is synthetic-face verification? Raw-pixel cosine and a tiny CNN on held-out identities.

Why: the built-in synthetic data set (corecompress_facekit.data.synthetic) is only useful for testing
compression if verification on it is learnable but not solved. This script measures, on identities
disjoint from training (``identity_offset``):

1. raw pixels: cosine similarity of mean-centred pixel vectors;
2. a tiny CNN (4 conv blocks, 128-d embedding) trained with softmax over the training identities
   on CPU, embedding = features(image) + features(flipped image), L2-normalised (evaluation.md).

Verification accuracy uses the simplest rule: the best single threshold on the evaluated pairs
themselves (an optimistic bound; the lead's evaluator with 10-fold thresholds will replace it).
AUC is threshold-free. Run (about 2-4 minutes on one core):

    PYTHONPATH=.:plugins python benchmarks/synthetic_difficulty.py --difficulty 1.0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from cli_args import count, number

from corecompress_facekit.data.synthetic import SyntheticFaceConfig, SyntheticFaces


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a same pair > score of a different pair) (ties 1/2)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    positives = same.astype(bool)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> float:
    """Accuracy of the best rule 'same if score >= t' over all thresholds t (optimistic)."""
    order = np.argsort(-scores, kind="mergesort")
    labels = same[order].astype(np.int64)
    # predicting the first j pairs as same: correct = positives among them + negatives after them
    true_pos = np.concatenate([[0], np.cumsum(labels)])
    false_pos = np.arange(len(labels) + 1) - true_pos
    correct = true_pos + ((1 - labels).sum() - false_pos)
    return float(correct.max() / len(labels))


def verification(embeddings: np.ndarray, pairs: np.ndarray) -> tuple[float, float]:
    """(best-threshold accuracy, AUC) of cosine similarity on ``pairs`` rows (a, b, same)."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    scores = np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)
    return best_threshold_accuracy(scores, pairs[:, 2]), roc_auc(scores, pairs[:, 2])


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float32)
    return flat - flat.mean(axis=1, keepdims=True)


def train_tiny_cnn(images: np.ndarray, labels: np.ndarray, classes: int, epochs: int, seed: int):
    """Softmax training of a 4-block CNN; returns the embedding network (eval mode)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))

    body = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = nn.Linear(128, classes)
    model = nn.Sequential(body, head)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    y_all = torch.from_numpy(labels)
    steps_per_epoch = (len(x_all) + 63) // 64
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        correct = 0
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            x, y = x_all[idx], y_all[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            correct += int((logits.argmax(1) == y).sum())
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, train acc {correct / len(x_all):.3f}")
    body.eval()
    return body


def cnn_embeddings(body, images: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    with torch.no_grad():
        return (body(x) + body(x.flip(3))).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--difficulty", type=number(0.0), default=1.0, help=">= 0 (0 = clean frontal faces)")
    parser.add_argument("--size", type=count(32), default=64, help="image side used for both measurements (>= 32)")
    parser.add_argument("--train-identities", type=count(2), default=100)
    parser.add_argument("--train-images", type=count(1), default=30, help="images per training identity")
    parser.add_argument("--test-identities", type=count(2), default=200)
    parser.add_argument("--test-images", type=count(2), default=10, help="images per held-out identity")
    parser.add_argument("--pairs", type=count(2), default=3000, help="verification pairs (half same, half different)")
    parser.add_argument("--epochs", type=count(1), default=12)
    parser.add_argument("--threads", type=count(1), default=1)
    parser.add_argument("--seed", type=count(0), default=0)
    parser.add_argument("--skip-cnn", action="store_true")
    args = parser.parse_args()

    test = SyntheticFaces(SyntheticFaceConfig(
        num_identities=args.test_identities, images_per_identity=args.test_images, image_size=args.size,
        seed=args.seed, difficulty=args.difficulty, identity_offset=1_000_000))
    pairs = test.pairs(args.pairs, seed=args.seed)
    started = time.perf_counter()
    test_images = test.render_many(range(len(test)))
    print(f"rendered {len(test)} held-out images in {time.perf_counter() - started:.1f} s")
    accuracy, auc = verification(raw_pixel_embeddings(test_images), pairs)
    print(f"raw pixels: best-threshold accuracy {100 * accuracy:.1f} %, AUC {auc:.3f}")
    if args.skip_cnn:
        return

    import torch

    torch.set_num_threads(args.threads)
    train = SyntheticFaces(SyntheticFaceConfig(
        num_identities=args.train_identities, images_per_identity=args.train_images, image_size=args.size,
        seed=args.seed, difficulty=args.difficulty))
    started = time.perf_counter()
    train_images = train.render_many(range(len(train)))
    print(f"rendered {len(train)} training images in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    body = train_tiny_cnn(train_images, train.labels, args.train_identities, args.epochs, args.seed)
    print(f"trained the tiny CNN in {time.perf_counter() - started:.1f} s ({args.threads} thread(s))")
    accuracy, auc = verification(cnn_embeddings(body, test_images), pairs)
    print(f"tiny CNN: best-threshold accuracy {100 * accuracy:.1f} %, AUC {auc:.3f}")


if __name__ == "__main__":
    main()
