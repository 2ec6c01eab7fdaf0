"""Procedural synthetic faces: the project's built-in data set, rendered on the fly, no downloads.

Why: every pipeline of the face plugin (recognition training, verification, CelebA-style attribute
recognition, compression recipes) must run end to end on a machine without data sets. This module
draws *identities* (face shape, skin tone, eye/brow/nose/mouth geometry, hair colour and style,
facial hair, make-up, accessory habits) and, per image, *nuisance* (pose, scale, lighting,
expression, occluders, clutter, noise, blur), renders them with numpy only
(``synthetic_render.py``) and labels the CelebA attributes it draws (CelebA, Liu et al.,
ICCV 2015; names and order as in ``list_attr_celeba.txt``).

Determinism: identity ``i`` (global id ``identity_offset + i``) is drawn from
``default_rng([seed, 1, id])`` and its image ``k`` from ``default_rng([seed, 2, id, k])``, so an
image depends only on (seed, id, k, size, nuisance knobs): never on access order, workers or subset.
See docs/synthetic_faces.md for what is rendered, the unlabelled attributes and measured difficulty.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from corecompress_facekit.celeba import CELEBA_ATTRIBUTES  # re-exported: official list_attr_celeba.txt order
from corecompress_facekit.data.synthetic_render import Canvas, draw_face

#: Attributes with no drawable definition (always 0; evaluators must mask them out).
UNRENDERED_ATTRIBUTES: tuple[str, ...] = ("Attractive",)
_ATTR_INDEX = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}


@dataclass(frozen=True)
class SyntheticFaceConfig:
    """Size, seed and nuisance strengths of a synthetic face set.

    Every nuisance knob is multiplied by ``difficulty`` (0 = frontal, clean, centred faces; the
    default 1.0 is tuned so that verification is learnable but not solved, see the docs).
    """

    num_identities: int = 100
    images_per_identity: int = 10
    image_size: int = 112
    seed: int = 0
    difficulty: float = 1.0
    identity_offset: int = 0
    rotation_deg: float = 8.0  # std of in-plane rotation, degrees
    yaw: float = 0.6  # largest |yaw|, radians
    scale_jitter: float = 0.08  # std of log face scale
    shift: float = 0.035  # std of translation, fraction of the image side
    lighting: float = 0.7  # largest directional lighting ramp across the image
    colour_jitter: float = 0.1  # std of brightness / contrast / colour cast
    expression: float = 1.0  # brow raise, gaze and squint strength
    appearance_jitter: float = 1.0  # per-image drift of identity geometry/colours, tied-back hair
    occlusion_prob: float = 0.35  # chance of each of up to two occluders
    clutter: float = 1.0  # background clutter (number and opacity of shapes)
    noise_std: float = 0.05  # largest sensor-noise std (image in [0, 1])
    blur_prob: float = 0.08  # chance of a strongly blurred (Blurry) image

    def __post_init__(self) -> None:
        if self.num_identities < 1 or self.images_per_identity < 1:
            raise ValueError("SyntheticFaceConfig: num_identities and images_per_identity must be >= 1")
        if self.image_size < 32:
            raise ValueError(f"SyntheticFaceConfig: image_size must be >= 32, got {self.image_size}")
        if self.seed < 0 or self.identity_offset < 0:
            raise ValueError("SyntheticFaceConfig: seed and identity_offset must be >= 0")
        if self.difficulty < 0:
            raise ValueError(f"SyntheticFaceConfig: difficulty must be >= 0, got {self.difficulty}")


def _rgb(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


_SKIN_TONES = np.array([[0.98, 0.87, 0.80], [0.93, 0.76, 0.64], [0.80, 0.60, 0.45],
                        [0.60, 0.42, 0.30], [0.36, 0.24, 0.17]], np.float32)
# hair colour classes: (name of the CelebA label or None, RGB)
_HAIR = (("Black_Hair", _rgb(0.07, 0.06, 0.06)), ("Brown_Hair", _rgb(0.36, 0.22, 0.12)),
         ("Blond_Hair", _rgb(0.86, 0.72, 0.46)), ("Gray_Hair", _rgb(0.68, 0.67, 0.66)),
         (None, _rgb(0.56, 0.22, 0.1)), (None, _rgb(0.6, 0.45, 0.3)))
_HAIR_PROBS_YOUNG = np.array([0.32, 0.3, 0.2, 0.01, 0.09, 0.08])
_HAIR_PROBS_OLD = np.array([0.2, 0.2, 0.08, 0.42, 0.04, 0.06])
_IRIS = np.array([[0.22, 0.13, 0.07], [0.38, 0.24, 0.12], [0.42, 0.38, 0.2], [0.3, 0.45, 0.3],
                  [0.3, 0.45, 0.66], [0.45, 0.5, 0.55]], np.float32)
_LIPSTICK = np.array([[0.75, 0.1, 0.15], [0.85, 0.35, 0.5], [0.55, 0.1, 0.25], [0.9, 0.4, 0.3]],
                     np.float32)
_EYESHADOW = np.array([[0.35, 0.2, 0.4], [0.3, 0.22, 0.16], [0.3, 0.4, 0.6], [0.2, 0.2, 0.22]],
                      np.float32)
_METALS = np.array([[0.85, 0.7, 0.3], [0.8, 0.8, 0.82]], np.float32)
_FRAMES = np.array([[0.05, 0.05, 0.05], [0.3, 0.18, 0.1], [0.8, 0.65, 0.3], [0.7, 0.7, 0.72],
                    [0.6, 0.1, 0.1], [0.15, 0.2, 0.45]], np.float32)


def _pick(table: np.ndarray, u: float) -> np.ndarray:
    return table[min(int(u * len(table)), len(table) - 1)]


def _between(lo: float, hi: float, u: float) -> float:
    return lo + (hi - lo) * u


def sample_identity(seed: int, identity: int) -> SimpleNamespace:
    """Identity parameters of global identity ``identity`` (a pure function of seed and id).

    Binary traits are decided first and the geometry is then drawn from disjoint ranges for the
    two outcomes (e.g. a big nose is drawn 1.3-1.5x, another 0.85-1.1x), so labels are visible.
    """
    draw = iter(np.random.default_rng([seed, 1, identity]).random(96).tolist()).__next__  # <= 67 used
    male = draw() < 0.42
    young = draw() < 0.78
    pale = draw() < 0.06
    tone = 0.04 * draw() if pale else 0.12 + 0.88 * draw() ** 1.2
    position = tone * (len(_SKIN_TONES) - 1)
    low = min(int(position), len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[low] + (position - low) * (_SKIN_TONES[low + 1] - _SKIN_TONES[low])
    skin = np.clip(skin + (_rgb(draw(), draw(), draw()) - 0.5) * 0.05, 0.0, 1.0)
    chubby = draw() < (0.05 if young else 0.15)
    oval = (not chubby) and draw() < 0.35
    face_width = _between(0.84, 0.94, draw()) + (0.04 if male else 0.0) + (0.12 if chubby else 0.0)
    ratio = _between(1.47, 1.58, draw()) if oval else _between(1.22, 1.4, draw())
    jaw_taper = _between(0.22, 0.42, draw()) - (0.08 if male else 0.0)
    double_chin = draw() < (0.45 if chubby else 0.03) + (0.0 if young else 0.08)
    narrow_eyes = draw() < 0.12
    eye_width = _between(0.13, 0.18, draw())
    eye_height = eye_width * (_between(0.3, 0.37, draw()) if narrow_eyes else _between(0.46, 0.62, draw()))
    bushy = draw() < (0.3 if male else 0.08)
    arched = draw() < (0.1 if male else 0.45)
    big_nose = draw() < (0.35 if male else 0.15)
    pointy_nose = draw() < 0.28
    big_lips = draw() < (0.15 if male else 0.3)
    high_cheekbones = draw() < 0.4
    rosy = (not male) and draw() < 0.15
    bags = draw() < (0.15 if young else 0.5)
    wrinkles = (not young) and draw() < 0.8
    # hair
    hair_class = int(np.searchsorted(np.cumsum(_HAIR_PROBS_YOUNG if young else _HAIR_PROBS_OLD), draw()))
    hair_class = min(hair_class, len(_HAIR) - 1)
    hair_label, hair_colour = _HAIR[hair_class]
    hair_colour = np.clip(hair_colour * _between(0.88, 1.12, draw()), 0.0, 1.0)
    bald = male and draw() < (0.04 if young else 0.3)
    receding = male and not bald and draw() < (0.1 if young else 0.35)
    bangs = not bald and not receding and draw() < (0.08 if male else 0.3)
    length_u = draw()
    if male:  # 0 short, 1 medium, 2 long
        hair_length = 0 if bald else int(length_u < 0.12)
    else:
        hair_length = 2 if length_u < 0.6 else int(length_u < 0.85)
    texture_u = draw()
    texture = "straight" if texture_u < 0.45 else ("wavy" if texture_u < 0.8 else "other")
    if bald:
        texture = "none"
    hair_stripes = {"straight": (60.0, 0.13, 0.0, 0.0), "wavy": (42.0, 0.2, 9.0, 2.5),
                    "other": (95.0, 0.22, 23.0, 4.0), "none": None}[texture]
    hair_volume = _between(0.0, 0.08, draw()) + (0.07 if texture == "wavy" else 0.0)
    part = (draw() - 0.5) * 0.2
    if receding:
        hairline = (_between(-1.08, -0.98, draw()), part, -0.05, 0.0, 0.0, 0.0)
    elif bangs:
        hairline = (_between(-0.55, -0.47, draw()), 0.0, 0.12, 0.02, 28.0, 1.0)
    else:
        hairline = (_between(-0.82, -0.72, draw()), part, 0.45, 0.0, 0.0, 0.0)
    # facial hair (only men)
    beard = male and draw() < 0.2
    goatee = male and not beard and draw() < 0.12
    mustache = male and draw() < (0.7 if beard else 0.12)
    sideburns = male and draw() < (0.5 if beard else 0.1)
    stubble = male and not beard and draw() < 0.25
    beard_colour = hair_colour * 0.85 if not bald else _rgb(0.3, 0.25, 0.22)
    # make-up and accessory habits
    heavy_makeup = (not male) and draw() < 0.6
    lipstick = (not male) and (heavy_makeup or draw() < 0.4)
    lip_base = np.clip(skin * _rgb(0.85, 0.55, 0.55) + _rgb(0.08, 0.0, 0.0), 0.0, 1.0)
    lip_colour = _pick(_LIPSTICK, draw()) if lipstick else lip_base
    glasses_habit = draw() < 0.08
    sunglasses = draw() < 0.15
    ident = SimpleNamespace(
        identity=identity, male=male, young=young, pale=pale, skin=skin.astype(np.float32),
        chubby=chubby, oval=oval, face_width=face_width, face_height=face_width * ratio,
        jaw_taper=jaw_taper, double_chin=double_chin,
        narrow_eyes=narrow_eyes, eye_width=eye_width, eye_height=eye_height,
        eye_dx=_between(0.33, 0.41, draw()), eye_v=_between(-0.2, -0.1, draw()), iris=_pick(_IRIS, draw()),
        bushy=bushy, arched=arched, brow_gap=_between(0.17, 0.23, draw()),
        brow_length=_between(0.16, 0.22, draw()),
        brow_thickness=_between(0.048, 0.062, draw()) if bushy else _between(0.02, 0.034, draw()),
        brow_arch=_between(0.07, 0.1, draw()) if arched else _between(-0.01, 0.03, draw()),
        brow_tilt=_between(-0.12, 0.18, draw()),
        brow_colour=(hair_colour * 0.75 if not bald else _rgb(0.25, 0.2, 0.18)).astype(np.float32),
        big_nose=big_nose, pointy_nose=pointy_nose,
        nose_scale=_between(1.3, 1.5, draw()) if big_nose else _between(0.85, 1.1, draw()),
        nose_v=_between(0.2, 0.3, draw()), nose_width=0.1,
        big_lips=big_lips, mouth_width=_between(0.21, 0.29, draw()),
        lower_lip=_between(0.05, 0.062, draw()) if big_lips else _between(0.024, 0.036, draw()),
        high_cheekbones=high_cheekbones, rosy_cheeks=rosy, blush=_rgb(0.92, 0.45, 0.47),
        bags=bags, wrinkles=wrinkles,
        hair_label=hair_label, hair_colour=hair_colour.astype(np.float32), bald=bald, receding=receding,
        bangs=bangs, hair_length=hair_length, texture=texture, hair_stripes=hair_stripes,
        hair_volume=hair_volume, hairline=hairline,
        beard=beard, goatee=goatee, mustache=mustache, sideburns=sideburns, stubble=stubble,
        beard_colour=beard_colour.astype(np.float32),
        stubble_colour=(beard_colour * 0.6 + _rgb(0.1, 0.1, 0.12)).astype(np.float32),
        heavy_makeup=heavy_makeup, lipstick=lipstick, lip_colour=lip_colour.astype(np.float32),
        eyeshadow=_pick(_EYESHADOW, draw()),
        p_glasses=0.9 if glasses_habit else 0.02, sunglasses=sunglasses,
        frame_colour=_pick(_FRAMES, draw()), frame_thickness=_between(0.018, 0.034, draw()),
        lens_aspect=_between(0.85, 1.15, draw()), lens_tint=_rgb(0.08, 0.08, 0.1),
        p_hat=0.6 if draw() < 0.08 else 0.02,
        p_earrings=(0.85 if draw() < 0.4 else 0.0) if not male else (0.8 if draw() < 0.03 else 0.0),
        p_necklace=(0.8 if draw() < 0.22 else 0.0) if not male else 0.0,
        p_necktie=(0.8 if draw() < 0.18 else 0.0) if male else 0.0,
        p_smile=_between(0.2, 0.8, draw()), p_open=_between(0.25, 0.65, draw()),
        metal=_pick(_METALS, draw()), clothes=_rgb(draw(), draw(), draw()),
    )
    ident.upper_lip = 0.7 * ident.lower_lip
    ident.mouth_v = ident.nose_v + _between(0.27, 0.35, draw())
    return ident


_IMAGE_FLAGS = 8  # first draws of an image: the per-image attributes (labels need only these)


def _image_rng(seed: int, identity: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, 2, identity, k])


def _image_flags(ident: SimpleNamespace, flags: np.ndarray, config: SyntheticFaceConfig) -> dict:
    """Per-image binary attributes from the first draws of the image generator(s).

    ``flags`` has shape (..., 8); the result maps names to bool arrays of shape (...).
    """
    smiling = flags[..., 0] < ident.p_smile
    return dict(
        smiling=smiling,
        mouth_open=flags[..., 1] < np.minimum(ident.p_open * np.where(smiling, 1.4, 0.8), 0.95),
        hat=flags[..., 2] < ident.p_hat,
        glasses=flags[..., 3] < ident.p_glasses,
        blurry=flags[..., 4] < config.blur_prob * config.difficulty,
        earrings=flags[..., 5] < ident.p_earrings,
        necklace=flags[..., 6] < ident.p_necklace,
        necktie=flags[..., 7] < ident.p_necktie,
    )


_PER_IMAGE_COLUMNS = {"smiling": "Smiling", "mouth_open": "Mouth_Slightly_Open", "hat": "Wearing_Hat",
                      "glasses": "Eyeglasses", "blurry": "Blurry", "earrings": "Wearing_Earrings",
                      "necklace": "Wearing_Necklace", "necktie": "Wearing_Necktie"}


def sample_image(config: SyntheticFaceConfig, ident: SimpleNamespace, k: int
                 ) -> tuple[SimpleNamespace, np.random.Generator]:
    """Expression, accessories and nuisance of image ``k`` of ``ident``; also returns the generator
    (positioned after the parameters) that the renderer uses for sensor noise."""
    rng = _image_rng(config.seed, ident.identity, k)
    img = SimpleNamespace(**{name: bool(value) for name, value in
                             _image_flags(ident, rng.random(_IMAGE_FLAGS), config).items()})
    draw = iter(rng.random(32).tolist()).__next__
    normal = iter(np.clip(rng.standard_normal(20), -2.5, 2.5).tolist()).__next__
    blobs = rng.random((6, 11))
    d = config.difficulty
    d1 = min(d, 1.0)
    img.smile = _between(0.6, 1.0, draw()) if img.smiling else _between(0.0, 0.3, draw())
    img.mouth_opening = _between(0.025, 0.07, draw()) if img.mouth_open else _between(0.0, 0.008, draw())
    img.hat_style = min(int(draw() * 3), 2)
    img.hat_tilt = (draw() - 0.5) * 0.2
    img.hat_colour = _rgb(draw(), draw(), draw()) * 0.8 + 0.1
    strength = config.expression * d
    img.gaze = (draw() - 0.5) * 0.5 * strength
    img.brow_raise = (draw() - 0.3) * 0.06 * strength
    img.eye_openness = float(np.clip(1.0 - 0.2 * img.smile + (draw() - 0.5) * 0.3 * strength, 0.5, 1.2))
    img.blur_sigma = _between(1.6, 3.0, draw()) if img.blurry else 0.6 * draw() * d1
    # pose and camera
    img.rotation = math.radians(config.rotation_deg * d) * normal()
    img.yaw = config.yaw * d * (2.0 * draw() - 1.0)
    img.scale = math.exp(config.scale_jitter * d * normal())
    img.shift_x, img.shift_y = config.shift * d * normal(), config.shift * d * normal()
    angle, light = 2.0 * math.pi * draw(), config.lighting * d * draw()
    img.light_gx, img.light_gy = light * math.cos(angle), light * math.sin(angle)
    jitter = config.colour_jitter * d
    contrast = math.exp(jitter * normal())
    img.gain = (contrast * (1.0 + 0.5 * jitter * np.array([normal(), normal(), normal()]))).astype(np.float32)
    img.offset = (1.0 - contrast) * 0.5 + jitter * normal()
    img.noise_std = config.noise_std * d * draw()
    grey, tint = draw(), _rgb(draw(), draw(), draw()) - 0.5
    img.background = 0.2 + 0.65 * grey + tint * 0.45 * d1 if d1 else _rgb(0.55, 0.55, 0.55)
    img.background_delta = (_rgb(draw(), draw(), draw()) - 0.5) * 0.6 * d1
    img.background_gx, img.background_gy = 2.0 * d1 * (draw() - 0.5), 2.0 * d1 * (draw() - 0.5)
    img.clothes = (ident.clothes * (1.0 - 0.7 * d1) + blobs[0, 8:11] * 0.7 * d1).astype(np.float32)
    img.shirt = _rgb(0.93, 0.93, 0.95) if blobs[1, 8] < 0.7 else _rgb(0.7, 0.8, 0.95)
    img.tie = blobs[2, 8:11].astype(np.float32) * 0.8
    img.clutter = [_blob(row, 2.3, 0.25, 0.9, None) for row in blobs[:4]
                   if row[0] < 0.5 * config.clutter * d]
    img.occluders = [_blob(row, 0.9, 0.2, 0.55, ident.skin) for row in blobs[4:]
                     if row[0] < config.occlusion_prob * d]
    jitter = config.appearance_jitter * d
    img.appearance = [jitter * normal() for _ in range(9)] + [draw() < 0.25 * min(jitter, 1.0)]
    return img, rng


def appearance(ident: SimpleNamespace, img: SimpleNamespace) -> SimpleNamespace:
    """The identity as seen in one image: small drift of its geometry and colours, and long hair
    sometimes tied back. Nothing that defines a CelebA label changes (the face aspect ratio, the
    size classes and the hair style flags are kept), so labels stay identity-level."""
    z = img.appearance
    if not any(z):
        return ident
    face = SimpleNamespace(**vars(ident))
    scale = 1.0 + 0.04 * z[0]
    face.face_width, face.face_height = ident.face_width * scale, ident.face_height * scale
    face.eye_dx = ident.eye_dx + 0.018 * z[1]
    face.eye_v = ident.eye_v + 0.02 * z[2]
    face.brow_gap = ident.brow_gap + 0.015 * z[3]
    face.nose_v = ident.nose_v + 0.018 * z[4]
    face.mouth_v = ident.mouth_v + 0.018 * z[4] + 0.015 * z[5]
    face.mouth_width = ident.mouth_width * (1.0 + 0.07 * z[5])
    face.skin = np.clip(ident.skin * (1.0 + 0.04 * z[6]), 0.0, 1.0)
    face.hair_colour = np.clip(ident.hair_colour * (1.0 + 0.06 * z[7]), 0.0, 1.0)
    face.hair_volume = max(ident.hair_volume + 0.04 * z[8], 0.0)
    face.hairline = (ident.hairline[0] + 0.03 * z[8],) + ident.hairline[1:]
    if z[9] and ident.hair_length > 0:
        face.hair_length = ident.hair_length - 1
    return face


def _blob(row: np.ndarray, reach: float, small: float, large: float, skin: np.ndarray | None) -> tuple:
    """A clutter/occluder shape (see synthetic_render._draw_blob) from 11 uniform numbers."""
    kind = min(int(row[1] * 3), 2)
    colour = row[8:11].astype(np.float32)
    if skin is not None and kind == 0:  # a hand-like skin blob
        colour = (skin * _between(0.85, 1.05, row[8])).astype(np.float32)
    below = 0.2 if skin is not None else 0.0  # occluders sit a little low, over the face
    return (kind, (row[2] * 2.0 - 1.0) * reach, (row[3] * 2.0 - 1.0) * reach + below,
            _between(small, large, row[4]), _between(small, large, row[5]), row[6] * math.pi, colour,
            _between(0.6, 1.0, row[7]) if skin is None else 1.0)


def identity_attributes(ident: SimpleNamespace) -> np.ndarray:
    """The identity-level CelebA labels (int8 (40,), official order); per-image columns are 0."""
    on = {
        "5_o_Clock_Shadow": ident.stubble, "Arched_Eyebrows": ident.arched, "Bags_Under_Eyes": ident.bags,
        "Bald": ident.bald, "Bangs": ident.bangs, "Big_Lips": ident.big_lips, "Big_Nose": ident.big_nose,
        "Bushy_Eyebrows": ident.bushy, "Chubby": ident.chubby, "Double_Chin": ident.double_chin,
        "Goatee": ident.goatee, "Heavy_Makeup": ident.heavy_makeup, "High_Cheekbones": ident.high_cheekbones,
        "Male": ident.male, "Mustache": ident.mustache, "Narrow_Eyes": ident.narrow_eyes,
        "No_Beard": not (ident.beard or ident.goatee), "Oval_Face": ident.oval, "Pale_Skin": ident.pale,
        "Pointy_Nose": ident.pointy_nose, "Receding_Hairline": ident.receding,
        "Rosy_Cheeks": ident.rosy_cheeks, "Sideburns": ident.sideburns,
        "Straight_Hair": ident.texture == "straight", "Wavy_Hair": ident.texture == "wavy",
        "Wearing_Lipstick": ident.lipstick, "Young": ident.young,
    }
    if ident.hair_label is not None:
        on[ident.hair_label] = True
    out = np.zeros(len(CELEBA_ATTRIBUTES), np.int8)
    for name, value in on.items():
        if value:
            out[_ATTR_INDEX[name]] = 1
    return out


def image_attributes(ident: SimpleNamespace, flags: np.ndarray, config: SyntheticFaceConfig) -> np.ndarray:
    """CelebA labels (int8 (..., 40)) of images of ``ident`` whose first draws are ``flags`` (..., 8)."""
    out = np.broadcast_to(identity_attributes(ident), flags.shape[:-1] + (len(CELEBA_ATTRIBUTES),)).copy()
    for key, value in _image_flags(ident, flags, config).items():
        out[..., _ATTR_INDEX[_PER_IMAGE_COLUMNS[key]]] = value
    return out


class SyntheticFaces:
    """Lazily rendered synthetic face set; ``torch.utils.data.Dataset`` compatible.

    Item ``n`` is image ``k = n % images_per_identity`` of local identity
    ``i = n // images_per_identity`` (global id ``identity_offset + i``) and returns
    ``(uint8 HxWx3 image, i, int8[40] CelebA attributes)``.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, config: SyntheticFaceConfig | None = None, **overrides) -> None:
        """``overrides`` replace fields of ``config`` (or of the default configuration)."""
        base = config if config is not None else SyntheticFaceConfig()
        self.config = dataclasses.replace(base, **overrides)
        self._identities: dict[int, SimpleNamespace] = {}
        self._attributes: np.ndarray | None = None

    def __len__(self) -> int:
        return self.config.num_identities * self.config.images_per_identity

    def _identity(self, local: int) -> SimpleNamespace:
        ident = self._identities.get(local)
        if ident is None:
            if len(self._identities) >= self._CACHE_LIMIT:
                self._identities.clear()
            ident = sample_identity(self.config.seed, self.config.identity_offset + local)
            self._identities[local] = ident
        return ident

    def _split(self, index: int) -> tuple[int, int]:
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"SyntheticFaces index {index} out of range for {n} images")
        return divmod(index, self.config.images_per_identity)

    def render(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (H, W, 3)."""
        local, k = self._split(index)
        ident = self._identity(local)
        img, rng = sample_image(self.config, ident, k)
        canvas = Canvas(self.config.image_size)
        draw_face(canvas, appearance(ident, img), img)
        canvas.add_noise(rng, img.noise_std)
        return canvas.to_uint8()

    def render_many(self, indices) -> np.ndarray:
        """Images of ``indices`` stacked as uint8 (n, H, W, 3)."""
        indices = list(indices)
        size = self.config.image_size
        out = np.empty((len(indices), size, size, 3), np.uint8)
        for j, index in enumerate(indices):
            out[j] = self.render(index)
        return out

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        local, k = self._split(index)
        image = self.render(index)
        ident = self._identity(local)
        flags = _image_rng(self.config.seed, ident.identity, k).random(_IMAGE_FLAGS)
        return image, local, image_attributes(ident, flags, self.config)

    @property
    def labels(self) -> np.ndarray:
        """Local identity label (0 .. num_identities-1) of every image, int64, without rendering."""
        return np.arange(len(self), dtype=np.int64) // self.config.images_per_identity

    @property
    def identity_ids(self) -> np.ndarray:
        """Global identity id (``identity_offset`` + label) of every image."""
        return self.labels + self.config.identity_offset

    @property
    def attributes(self) -> np.ndarray:
        """(N, 40) int8 CelebA labels of every image, from the parameters only (no rendering)."""
        if self._attributes is None:
            cfg = self.config
            rows = np.empty((len(self), len(CELEBA_ATTRIBUTES)), np.int8)
            for local in range(cfg.num_identities):
                ident = sample_identity(cfg.seed, cfg.identity_offset + local)
                flags = np.stack([_image_rng(cfg.seed, ident.identity, k).random(_IMAGE_FLAGS)
                                  for k in range(cfg.images_per_identity)])
                start = local * cfg.images_per_identity
                rows[start:start + cfg.images_per_identity] = image_attributes(ident, flags, cfg)
            self._attributes = rows
        return self._attributes

    @property
    def rendered_attributes(self) -> tuple[str, ...]:
        """Names of the attributes this renderer draws and labels."""
        return tuple(name for name in CELEBA_ATTRIBUTES if name not in UNRENDERED_ATTRIBUTES)

    @property
    def attribute_mask(self) -> np.ndarray:
        """(40,) bool: True where the attribute is rendered (evaluate only these)."""
        return np.array([name not in UNRENDERED_ATTRIBUTES for name in CELEBA_ATTRIBUTES])

    def pairs(self, num_pairs: int, seed: int = 0) -> np.ndarray:
        """Verification pairs ``(num_pairs, 3)`` int64 rows ``(index_a, index_b, same)``.

        Rows alternate same / different (same first), so any run of consecutive rows, e.g. the
        10 consecutive folds of the LFW protocol, is balanced; deterministic in ``seed``.
        """
        cfg = self.config
        if cfg.num_identities < 2 or cfg.images_per_identity < 2:
            raise ValueError("pairs need at least 2 identities and 2 images per identity")
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}")
        rng = np.random.default_rng([seed, 3])
        ids, ipi = cfg.num_identities, cfg.images_per_identity
        n_same, n_diff = (num_pairs + 1) // 2, num_pairs // 2
        who = rng.integers(0, ids, n_same)
        k1 = rng.integers(0, ipi, n_same)
        k2 = (k1 + rng.integers(1, ipi, n_same)) % ipi
        first = rng.integers(0, ids, n_diff)
        second = (first + rng.integers(1, ids, n_diff)) % ids
        out = np.empty((num_pairs, 3), np.int64)
        out[0::2] = np.stack([who * ipi + k1, who * ipi + k2, np.ones(n_same, np.int64)], 1)
        out[1::2] = np.stack([first * ipi + rng.integers(0, ipi, n_diff),
                              second * ipi + rng.integers(0, ipi, n_diff), np.zeros(n_diff, np.int64)], 1)
        return out


