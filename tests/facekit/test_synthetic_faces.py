"""Tests of the procedural synthetic face data set (corecompress_facekit.data.synthetic)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from corecompress_facekit.data.synthetic import (
    CELEBA_ATTRIBUTES,
    SyntheticFaceConfig,
    SyntheticFaces,
    sample_identity,
    sample_image,
)


def _faces(**overrides) -> SyntheticFaces:
    base = dict(num_identities=6, images_per_identity=4, image_size=48, seed=7)
    base.update(overrides)
    return SyntheticFaces(SyntheticFaceConfig(**base))


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted 1/2."""
    pos, neg = scores[positive.astype(bool)], scores[~positive.astype(bool)]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def test_attribute_names_follow_the_official_celeba_order():
    assert len(CELEBA_ATTRIBUTES) == 40 and len(set(CELEBA_ATTRIBUTES)) == 40
    assert CELEBA_ATTRIBUTES[0] == "5_o_Clock_Shadow" and CELEBA_ATTRIBUTES[-1] == "Young"
    assert CELEBA_ATTRIBUTES.index("Male") == 20
    assert CELEBA_ATTRIBUTES.index("Smiling") == 31
    assert CELEBA_ATTRIBUTES.index("Eyeglasses") == 15


@pytest.mark.parametrize("size", [112, 48])
def test_items_have_the_documented_shapes_and_types(size):
    faces = _faces(image_size=size, num_identities=2, images_per_identity=2)
    image, label, attributes = faces[3]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert label == 1 and isinstance(label, int)
    assert attributes.shape == (40,) and attributes.dtype == np.int8
    assert set(np.unique(attributes)) <= {0, 1}
    batch = faces.render_many([0, 3])
    assert batch.shape == (2, size, size, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], image)
    assert image.std() > 10  # not a blank image


def test_rendering_is_deterministic_and_independent_of_order_subset_and_cache():
    first = _faces()
    forward = [first.render(i) for i in (0, 5, 9, 23)]
    second = _faces()
    backward = [second.render(i) for i in (23, 9, 5, 0)][::-1]
    for a, b in zip(forward, backward):
        assert a.tobytes() == b.tobytes()
    # a larger set (more identities and more images each) holds the same images for the same (id, k)
    larger = _faces(num_identities=9, images_per_identity=7)
    for index in (0, 5, 9, 23):
        identity, k = divmod(index, 4)
        assert larger.render(identity * 7 + k).tobytes() == first.render(index).tobytes()
    # a pickled copy (what a DataLoader worker gets) renders the same bytes
    copy = pickle.loads(pickle.dumps(first))
    assert copy.render(9).tobytes() == forward[2].tobytes()
    # another seed gives other faces
    assert _faces(seed=8).render(0).tobytes() != forward[0].tobytes()


def test_identities_differ_and_are_stable_across_their_images():
    faces = _faces(num_identities=8, images_per_identity=3, difficulty=0.0, image_size=64)
    images = faces.render_many(range(len(faces))).astype(np.float32)
    labels = faces.labels
    distance = np.abs(images[:, None] - images[None, :]).mean(axis=(2, 3, 4))
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert distance[~same].min() > 1.0  # every pair of identities looks different
    # without nuisance, images of one identity are closer than images of different identities
    assert distance[same & off_diagonal].mean() < 0.5 * distance[~same].mean()


def test_labels_and_identity_ids_need_no_rendering_and_offsets_are_disjoint():
    train = _faces(num_identities=5, images_per_identity=3)
    held_out = _faces(num_identities=5, images_per_identity=3, identity_offset=5)
    np.testing.assert_array_equal(train.labels, np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(held_out.labels, np.repeat(np.arange(5), 3))
    assert set(train.identity_ids).isdisjoint(held_out.identity_ids)
    union = _faces(num_identities=10, images_per_identity=3)
    assert held_out.render(0).tobytes() == union.render(15).tobytes()
    assert held_out.render(0).tobytes() != train.render(0).tobytes()


def test_attribute_mask_and_unrendered_attributes_are_zero():
    faces = _faces(num_identities=60, images_per_identity=3)
    mask = faces.attribute_mask
    assert mask.dtype == bool and mask.shape == (40,)
    assert not mask[CELEBA_ATTRIBUTES.index("Attractive")]
    assert faces.rendered_attributes == tuple(n for n, m in zip(CELEBA_ATTRIBUTES, mask) if m)
    attributes = faces.attributes
    assert attributes.shape == (180, 40) and attributes.dtype == np.int8
    assert not attributes[:, ~mask].any()
    # the rendered ones vary (each is 1 for some and 0 for other images, or at least for one)
    assert attributes[:, mask].any(axis=0).sum() >= 30
    # item attributes agree with the bulk property
    for index in (0, 7, 179):
        np.testing.assert_array_equal(faces[index][2], attributes[index])
    male = attributes[:, CELEBA_ATTRIBUTES.index("Male")]
    no_beard = attributes[:, CELEBA_ATTRIBUTES.index("No_Beard")]
    assert np.all(no_beard[male == 0] == 1)  # beards are drawn on men only


def test_eyeglasses_label_matches_frame_pixels_around_the_eyes():
    config = SyntheticFaceConfig(num_identities=60, images_per_identity=3, image_size=64, seed=3,
                                 difficulty=0.0)
    faces = SyntheticFaces(config)
    label = faces.attributes[:, CELEBA_ATTRIBUTES.index("Eyeglasses")]
    assert 3 <= label.sum() <= len(label) - 3
    images = faces.render_many(range(len(faces))).astype(np.float32) / 255.0
    angles = np.linspace(0.3, np.pi - 0.3, 12)  # lower half of each lens rim (on the cheeks)
    scores = []
    for index, image in enumerate(images):
        ident = sample_identity(config.seed, index // 3)
        # at difficulty 0 the face frame is fixed: centre (0.5 S, 0.49 S), 0.25 S pixels per unit
        a = ident.eye_width * 1.45 + 0.025
        b = max(ident.eye_height * 2.0, 0.12) * ident.lens_aspect
        rim = [(64 * (0.49 + 0.25 * (ident.eye_v + 0.01 + b * np.sin(angles))),
                64 * (0.5 + 0.25 * (side * ident.eye_dx + a * np.cos(angles)))) for side in (-1, 1)]
        rows, cols = (np.concatenate(c).astype(int) for c in zip(*rim))
        distance = np.abs(image - ident.frame_colour).max(axis=-1)
        nearest = np.min([distance[rows + dy, cols + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        scores.append((nearest < 0.15).mean())
    assert _auc(np.array(scores), label) > 0.9


def test_blurry_label_matches_lost_sharpness():
    config = SyntheticFaceConfig(num_identities=30, images_per_identity=4, image_size=64, seed=5,
                                 blur_prob=0.4, noise_std=0.0)
    faces = SyntheticFaces(config)
    label = faces.attributes[:, CELEBA_ATTRIBUTES.index("Blurry")]
    assert 5 <= label.sum() <= len(label) - 5
    images = faces.render_many(range(len(faces))).astype(np.float32)
    sharpness = np.abs(np.diff(images, axis=1)).mean(axis=(1, 2, 3)) + np.abs(
        np.diff(images, axis=2)).mean(axis=(1, 2, 3))
    assert _auc(-sharpness, label) > 0.9


def test_hat_label_matches_hat_colour_above_the_brows():
    config = SyntheticFaceConfig(num_identities=60, images_per_identity=4, image_size=64, seed=11,
                                 difficulty=0.0)
    faces = SyntheticFaces(config)
    label = faces.attributes[:, CELEBA_ATTRIBUTES.index("Wearing_Hat")]
    assert 3 <= label.sum() <= len(label) - 3
    images = faces.render_many(range(len(faces))).astype(np.float32) / 255.0
    scores = []
    for index, image in enumerate(images):
        ident = sample_identity(config.seed, index // 4)
        img, _ = sample_image(config, ident, index % 4)
        top = image[: int(64 * (0.49 + 0.25 * (ident.eye_v - 0.4)))]
        scores.append((np.abs(top - img.hat_colour).max(axis=-1) < 0.05).mean())
    assert _auc(np.array(scores), label) > 0.9


def test_pairs_are_balanced_valid_and_deterministic():
    faces = _faces(num_identities=10, images_per_identity=5)
    pairs = faces.pairs(100, seed=1)
    assert pairs.shape == (100, 3) and pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs, faces.pairs(100, seed=1))
    assert not np.array_equal(pairs, faces.pairs(100, seed=2))
    labels = faces.labels
    same = pairs[:, 2] == 1
    assert same.sum() == 50
    np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], same)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert pairs[:, :2].min() >= 0 and pairs[:, :2].max() < len(faces)
    for fold in pairs.reshape(10, 10, 3):  # ten consecutive folds, each balanced
        assert fold[:, 2].sum() == 5


def test_invalid_configurations_and_indices_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticFaceConfig(image_size=16)
    with pytest.raises(ValueError, match="difficulty"):
        SyntheticFaceConfig(difficulty=-1.0)
    faces = _faces(num_identities=2, images_per_identity=2)
    with pytest.raises(IndexError):
        faces[4]
    assert faces[-1][1] == 1
    with pytest.raises(ValueError):
        _faces(num_identities=2, images_per_identity=1).pairs(4)
