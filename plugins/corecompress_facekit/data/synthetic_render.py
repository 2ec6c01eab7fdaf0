"""Numpy-only anti-aliased drawing primitives for the procedural synthetic-face renderer.

Why: the built-in synthetic face data set (``synthetic.py``) must render thousands of images per
minute on a laptop CPU with nothing but numpy. Every primitive is evaluated only inside its own
bounding window, as an analytic (approximate) signed distance on the pixel grid, and turned into
coverage with a one-pixel ramp, so edges are anti-aliased at any image size.

Coordinates. Shapes are placed in *face coordinates* ``(u, v)``: origin at the face centre, ``u`` to
the image right, ``v`` downwards, one unit ~ half the face width. ``Canvas.set_frame`` sets the
similarity transform (centre, scale in pixels per unit, in-plane angle) from face coordinates to
pixels. Every primitive also takes a horizontal ``squash`` about its own centre, used by the face
composer to imitate yaw (the half of the face turning away gets narrower).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np

Colour = np.ndarray  # float32 (3,) in [0, 1] or a per-pixel field (h, w, 3)


class Canvas:
    """A float32 RGB image in [0, 1] plus the face-to-pixel transform; primitives draw into it."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.image = np.zeros((self.size, self.size, 3), np.float32)
        self._pixel_centres = np.arange(self.size, dtype=np.float32) + 0.5
        self.set_frame(self.size * 0.5, self.size * 0.5, self.size * 0.25, 0.0)

    # ------------------------------------------------------------------ transform
    def set_frame(self, centre_x: float, centre_y: float, scale: float, angle: float) -> None:
        """Place the face: pixel = centre + scale * R(angle) @ (u, v)."""
        self.scale = float(scale)
        self._cx, self._cy = float(centre_x), float(centre_y)
        c, s = math.cos(angle), math.sin(angle)
        self._cos, self._sin = c, s
        inv = 1.0 / self.scale
        # (u, v) = (a1 x + b1 y + c1, a2 x + b2 y + c2)
        self._to_face = (c * inv, s * inv, -(c * centre_x + s * centre_y) * inv,
                         -s * inv, c * inv, (s * centre_x - c * centre_y) * inv)

    def _local(self, cu: float, cv: float, sx: float, sy: float, phi: float, squash: float,
               extent: tuple[float, float, float, float]):
        """Window of a primitive and its local coordinates there.

        Local coordinates are (along, across) / (sx, sy) after undoing the frame, the squash about
        (cu, cv) and the primitive's own rotation ``phi``. ``extent`` = (u0, u1, v0, v1) bounds the
        shape around (cu, cv) in face units. Returns None when the window misses the image.
        """
        s, c, n = self.scale, self._cos, self._sin
        u0, u1, v0, v1 = extent
        px = self._cx + s * (c * cu - n * cv)
        py = self._cy + s * (n * cu + c * cv)
        x0 = max(int(px + s * (min(c * u0, c * u1) + min(-n * v0, -n * v1)) - 1.5), 0)
        x1 = min(int(px + s * (max(c * u0, c * u1) + max(-n * v0, -n * v1)) + 2.5), self.size)
        y0 = max(int(py + s * (min(n * u0, n * u1) + min(c * v0, c * v1)) - 1.5), 0)
        y1 = min(int(py + s * (max(n * u0, n * u1) + max(c * v0, c * v1)) + 2.5), self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        a1, b1, c1, a2, b2, c2 = self._to_face
        k = 1.0 / squash
        c1, c2 = c1 - cu, c2 - cv
        if phi == 0.0:
            ax, bx, ox = k * a1 / sx, k * b1 / sx, k * c1 / sx
            ay, by, oy = a2 / sy, b2 / sy, c2 / sy
        else:
            cp, sp = math.cos(phi), math.sin(phi)
            ck, sk = cp * k, sp * k
            ax, bx, ox = (ck * a1 + sp * a2) / sx, (ck * b1 + sp * b2) / sx, (ck * c1 + sp * c2) / sx
            ay, by, oy = (cp * a2 - sk * a1) / sy, (cp * b2 - sk * b1) / sy, (cp * c2 - sk * c1) / sy
        xs = self._pixel_centres[x0:x1]
        ys = self._pixel_centres[y0:y1, None]
        lx = ax * xs
        lx += ox
        lx = lx + bx * ys
        ly = ay * xs
        ly += oy
        ly = ly + by * ys
        return (slice(y0, y1), slice(x0, x1)), lx, ly

    def _blend(self, window, alpha: np.ndarray, colour: Colour, opacity: float) -> None:
        if opacity != 1.0:
            alpha *= opacity
        region = self.image[window]
        region += alpha[..., None] * (colour - region)

    # ------------------------------------------------------------------ primitives
    def ellipse(self, cu: float, cv: float, a: float, b: float, colour: Colour, *, phi: float = 0.0,
                squash: float = 1.0, opacity: float = 1.0) -> None:
        """Filled ellipse with half-axes (a, b) rotated by phi."""
        loc = self._local(cu, cv, a, b, phi, squash, _ellipse_extent(a, b, phi, squash))
        if loc is None:
            return
        window, lx, ly = loc
        _coverage(lx, ly, 0.5 * self.scale * min(a * squash, b))
        self._blend(window, lx, colour, opacity)

    def region(self, cu: float, cv: float, a: float, b: float, colour: Colour, *, taper: float = 0.0,
               cut: tuple[float, ...] | None = None, keep_below: bool = False, squash: float = 1.0,
               opacity: float = 1.0, stripes: tuple[float, float, float, float] | None = None) -> None:
        """Egg-shaped region (an ellipse narrowing by ``taper`` below its centre), optionally cut.

        ``cut`` = (c0, c1, c2, amplitude, frequency, phase) describes the curve
        v = c0 + c1 u + c2 u^2 + amplitude sin(frequency u + phase) relative to (cu, cv) in face
        units; the part above it is kept (below if ``keep_below``). Used for the face, hair caps,
        beards and hats. ``stripes`` = (frequency, amplitude, wave frequency, wave amplitude) shades
        the colour with (wavy) strands.
        """
        top, bottom = -b, b
        if cut is not None:  # shrink the window to the kept side of the cut
            c0, c1, c2, amp = cut[:4]
            if keep_below:
                top = max(top, c0 - abs(c1) * a + min(c2, 0.0) * a * a - abs(amp))
            else:
                bottom = min(bottom, c0 + abs(c1) * a + max(c2, 0.0) * a * a + abs(amp))
            if top >= bottom:
                return
        loc = self._local(cu, cv, a, b, 0.0, squash, (-a * squash, a * squash, top, bottom))
        if loc is None:
            return
        window, lx, ly = loc
        if cut is not None or stripes is not None:
            u = lx * a
            v = ly * b
        if taper:
            width = np.maximum(ly, 0.0)
            width *= width
            width *= -taper
            width += 1.0
            lx /= width
        alpha = _coverage(lx, ly, 0.5 * self.scale * min(a * squash, b))
        if cut is not None:
            c0, c1, c2, amp, freq, phase = cut
            curve = (c2 * u + c1) * u + c0
            if amp:
                curve += amp * np.sin(freq * u + phase)
            curve -= v
            curve *= -self.scale if keep_below else self.scale
            curve += 0.5
            alpha *= _clip01(curve)
        if stripes is not None:
            freq, amp, wave_freq, wave_amp = stripes
            phase = u * freq
            if wave_amp:
                phase += wave_amp * np.sin(v * wave_freq)
            shade = np.sin(phase, out=phase)
            shade *= amp
            shade += 1.0
            colour = shade[..., None] * colour
        self._blend(window, alpha, colour, opacity)

    def band(self, cu: float, cv: float, half_length: float, curvature: float, thickness: float,
             colour: Colour, *, phi: float = 0.0, squash: float = 1.0, opacity: float = 1.0,
             blunt: bool = False) -> None:
        """A stroke along the parabola across = curvature * t^2, t in [-1, 1] along its length.

        The half-thickness ``thickness`` (face units) tapers to zero at the ends (lens-shaped, or
        with rounder ``blunt`` ends). Positive curvature bends the ends down (an arch); used for
        brows, lips, mustaches, eyelids, wrinkles and necklaces.
        """
        low, high = min(curvature, 0.0) - thickness, max(curvature, 0.0) + thickness
        if phi == 0.0:
            extent = (-half_length * squash, half_length * squash, low, high)
        else:
            reach = math.hypot(half_length, max(high, -low))
            extent = (-reach * squash, reach * squash, -reach, reach)
        loc = self._local(cu, cv, half_length, 1.0, phi, squash, extent)
        if loc is None:
            return
        window, t, across = loc
        t *= t
        profile = 1.0 - t * t if blunt else 1.0 - t
        np.maximum(profile, 0.0, out=profile)
        t *= curvature
        across -= t
        np.abs(across, out=across)
        profile *= thickness
        across -= profile
        across *= -self.scale
        across += 0.5
        self._blend(window, _clip01(across), colour, opacity)

    def ring(self, cu: float, cv: float, a: float, b: float, thickness: float, colour: Colour, *,
             phi: float = 0.0, squash: float = 1.0, opacity: float = 1.0) -> None:
        """Outline of an ellipse (half-axes a, b) with half line width ``thickness``."""
        loc = self._local(cu, cv, a, b, phi, squash,
                          _ellipse_extent(a + thickness, b + thickness, phi, squash))
        if loc is None:
            return
        window, lx, ly = loc
        lx *= lx
        ly *= ly
        lx += ly
        np.sqrt(lx, out=lx)
        lx -= 1.0
        np.abs(lx, out=lx)
        lx *= -self.scale * min(a * squash, b)
        lx += 0.5 + thickness * self.scale
        self._blend(window, _clip01(lx), colour, opacity)

    def box(self, cu: float, cv: float, a: float, b: float, colour: Colour, *, phi: float = 0.0,
            squash: float = 1.0, opacity: float = 1.0) -> None:
        """Filled rectangle with half-sizes (a, b) rotated by phi."""
        cp, sp = abs(math.cos(phi)), abs(math.sin(phi))
        ru, rv = (a * cp + b * sp) * squash, a * sp + b * cp
        loc = self._local(cu, cv, a, b, phi, squash, (-ru, ru, -rv, rv))
        if loc is None:
            return
        window, lx, ly = loc
        np.abs(lx, out=lx)
        np.abs(ly, out=ly)
        lx -= 1.0
        ly -= 1.0
        lx *= a * squash
        ly *= b
        np.maximum(lx, ly, out=lx)
        lx *= -self.scale
        lx += 0.5
        self._blend(window, _clip01(lx), colour, opacity)

    def eye(self, cu: float, cv: float, a: float, b: float, iris_radius: float, gaze: float,
            iris_colour: Colour, sclera: Colour, *, squash: float = 1.0) -> None:
        """Almond eye: sclera ellipse with an iris disc (shifted by ``gaze``) and pupil, clipped."""
        loc = self._local(cu, cv, a, b, 0.0, squash, (-a * squash, a * squash, -b, b))
        if loc is None:
            return
        window, lx, ly = loc
        s = self.scale
        ix = lx - gaze / a
        ix *= a
        ix *= ix
        iy = ly * b
        iy *= iy
        ix += iy  # squared distance to the iris centre, face units
        white = _coverage(lx, ly, 0.5 * s * min(a * squash, b))
        k_iris = 0.5 * s / iris_radius
        iris = _clip01(0.5 + k_iris * iris_radius ** 2 - k_iris * ix)
        pupil_radius = 0.45 * iris_radius
        k_pupil = 0.5 * s / pupil_radius
        pupil = _clip01(0.5 + k_pupil * pupil_radius ** 2 - k_pupil * ix)
        pupil *= -0.9
        pupil += 1.0
        colour = sclera + iris[..., None] * (iris_colour - sclera)
        colour *= pupil[..., None]
        self._blend(window, white, colour, 1.0)

    # ------------------------------------------------------------------ whole-image effects
    def fill_gradient(self, colour: Colour, delta: Colour, gx: float, gy: float) -> None:
        """Background: colour + (gx x + gy y) * delta with x, y in [-0.5, 0.5]."""
        pos = self._pixel_centres / self.size - 0.5
        ramp = (gx * pos)[None, :] + (gy * pos)[:, None]
        self.image[...] = colour
        self.image += ramp[..., None] * delta

    def light(self, gx: float, gy: float, gain: Colour, offset: float) -> None:
        """Directional lighting ramp times per-channel gain (contrast, colour cast) plus offset."""
        pos = self._pixel_centres / self.size - 0.5
        ramp = (gx * pos)[None, :] + (1.0 + gy * pos)[:, None]
        self.image *= ramp[..., None]
        self.image *= gain
        self.image += offset

    def blur(self, sigma: float) -> None:
        """Separable Gaussian blur (edge-clamped) of standard deviation ``sigma`` pixels.

        Explicit taps rather than a matrix product: no BLAS threads, so the result does not depend
        on thread counts (and a busy machine does not slow it down).
        """
        if sigma < 0.3:
            return
        weights = gaussian_taps(round(sigma * 20.0) / 20.0)
        radius = len(weights) // 2
        n = self.size
        padded = np.pad(self.image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
        out = padded[:n] * weights[0]
        for i in range(1, len(weights)):
            out += padded[i:i + n] * weights[i]
        padded = np.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="edge")
        out = padded[:, :n] * weights[0]
        for i in range(1, len(weights)):
            out += padded[:, i:i + n] * weights[i]
        self.image = out

    def add_noise(self, rng: np.random.Generator, std: float) -> None:
        """Additive white Gaussian noise (sensor noise)."""
        if std > 0.0:
            noise = rng.standard_normal(self.image.shape, dtype=np.float32)
            noise *= std
            self.image += noise

    def to_uint8(self) -> np.ndarray:
        """The image as uint8 HxWx3, rounded and clipped."""
        out = self.image * 255.0
        out += 0.5
        np.clip(out, 0.0, 255.0, out=out)
        return out.astype(np.uint8)


def _clip01(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] in place (two ufunc calls: cheaper than np.clip on small arrays)."""
    np.maximum(x, 0.0, out=x)
    return np.minimum(x, 1.0, out=x)


def _coverage(lx: np.ndarray, ly: np.ndarray, edge: float) -> np.ndarray:
    """Anti-aliased coverage of the unit disc in local coordinates, computed in place in ``lx``.

    Near the boundary the signed distance in pixels is about (r^2 - 1) / 2 * min half-axis * scale,
    so coverage = clip(0.5 - edge (r^2 - 1)) with edge = min half-axis * scale / 2.
    """
    lx *= lx
    ly *= ly
    lx += ly
    lx *= -edge
    lx += 0.5 + edge
    return _clip01(lx)


def _ellipse_extent(a: float, b: float, phi: float, squash: float) -> tuple[float, float, float, float]:
    """Half extents (as a box) of an ellipse rotated by phi, then squashed horizontally."""
    if phi == 0.0:
        return (-a * squash, a * squash, -b, b)
    cp, sp = math.cos(phi), math.sin(phi)
    ru, rv = math.hypot(a * cp, b * sp) * squash, math.hypot(a * sp, b * cp)
    return (-ru, ru, -rv, rv)


@functools.lru_cache(maxsize=128)
def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised float32 Gaussian taps of radius ceil(2.5 sigma) (cached; sigma is quantised)."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


# ---------------------------------------------------------------------- face composition
def draw_face(canvas: Canvas, ident: SimpleNamespace, img: SimpleNamespace) -> None:
    """Compose one face from identity parameters ``ident`` and image parameters ``img``.

    Both are namespaces produced by ``synthetic.sample_identity`` / ``synthetic.sample_image``;
    everything random was drawn there, so this function is a pure function of its inputs. Painter's
    order, back to front: background clutter, clothes, back hair, neck and jewellery, ears, face,
    skin details, eyes, brows, nose, mouth, facial hair, front hair, hat, glasses, occluders.
    """
    size = canvas.size
    canvas.set_frame(size * (0.5 + img.shift_x), size * (0.49 + img.shift_y),
                     size * 0.25 * img.scale, img.rotation)
    canvas.fill_gradient(img.background, img.background_delta, img.background_gx, img.background_gy)
    for shape in img.clutter:
        _draw_blob(canvas, shape)

    cos_y, sin_y = math.cos(img.yaw), math.sin(img.yaw)

    def place(u: float, z: float) -> tuple[float, float]:
        """Yaw of a point at horizontal position u and depth z: new u and local squash."""
        squash = cos_y - sin_y * u / max(z, 0.4)
        return u * cos_y + z * sin_y, min(max(squash, 0.4), 1.3)

    fw, fh = ident.face_width, ident.face_height
    skin, hair = ident.skin, ident.hair_colour
    vol = ident.hair_volume
    hair_u, _ = place(0.0, -0.25)
    face_u, _ = place(0.0, 0.1)

    # clothes, long hair behind the shoulders, neck, jewellery
    canvas.ellipse(place(0.0, -0.3)[0], fh + 1.2, 1.8, 1.0, img.clothes)
    if ident.hair_length == 2 and not ident.bald:
        canvas.region(hair_u, 0.5, fw + 0.3 + vol, 1.95, hair, stripes=ident.hair_stripes)
    elif ident.hair_length == 1 and not ident.bald:
        canvas.region(hair_u, 0.05, fw + 0.22 + vol, 1.3, hair, stripes=ident.hair_stripes)
    canvas.box(place(0.0, -0.1)[0], fh * 0.8 + 0.3, 0.33 * fw + 0.06, 0.55, skin * 0.86)
    if img.necktie:
        tie_u = place(0.0, 0.0)[0]
        canvas.ellipse(tie_u, fh + 0.5, 0.34, 0.2, img.shirt)
        canvas.box(tie_u, fh + 0.8, 0.075, 0.35, img.tie)
        canvas.ellipse(tie_u, fh + 0.42, 0.08, 0.065, img.tie * 0.85)
    if img.necklace:
        neck_u = place(0.0, 0.0)[0]
        canvas.band(neck_u, fh + 0.24, 0.36 * fw + 0.05, -0.16, 0.02, ident.metal)
        canvas.ellipse(neck_u, fh + 0.27, 0.035, 0.045, ident.metal)
    # hair behind the head (also the fringe of bald heads), then ears
    if ident.bald:
        canvas.region(hair_u, -0.05, fw + 0.07, fh * 0.72, hair, cut=(-0.35, 0, 0, 0, 0, 0),
                      keep_below=True)
    else:
        canvas.region(hair_u, -0.15, fw + 0.08 + vol, fh + vol, hair, stripes=ident.hair_stripes)
    ear_v = ident.eye_v + 0.12
    for side in (-1.0, 1.0):
        ear_u, _ = place(side * fw * 0.97, -0.05)
        canvas.ellipse(ear_u, ear_v, 0.11, 0.21, skin * 0.92)
        canvas.ellipse(ear_u + side * 0.02, ear_v, 0.05, 0.12, skin * 0.78)

    # face and skin details
    canvas.region(face_u, 0.0, fw, fh, skin, taper=ident.jaw_taper, squash=cos_y ** 0.25)
    if ident.double_chin:
        chin_u, _ = place(0.0, 0.6)
        canvas.band(chin_u, fh * 0.9, 0.33 * fw, -0.06, 0.016, skin * 0.74, opacity=0.8)
    if ident.stubble:
        canvas.region(face_u, 0.0, fw, fh, ident.stubble_colour, taper=ident.jaw_taper,
                      cut=(ident.nose_v + 0.14, 0, -0.12, 0, 0, 0), keep_below=True, opacity=0.28)
    if ident.high_cheekbones:
        for side in (-1.0, 1.0):  # hollow under the cheekbone, highlight on it
            u, sq = place(side * 0.62 * fw, 0.6)
            canvas.ellipse(u, ident.nose_v + 0.12, 0.2, 0.055, skin * 0.8, phi=side * 0.45,
                           squash=sq, opacity=0.5)
            u, sq = place(side * 0.55 * fw, 0.7)
            canvas.ellipse(u, ident.nose_v - 0.04, 0.17, 0.075, np.minimum(skin * 1.1, 1.0),
                           phi=side * 0.3, squash=sq, opacity=0.45)
    if ident.rosy_cheeks:
        for side in (-1.0, 1.0):
            u, sq = place(side * 0.5 * fw, 0.75)
            canvas.ellipse(u, ident.nose_v + 0.04, 0.17, 0.12, ident.blush, squash=sq, opacity=0.4)
    if ident.wrinkles:
        for dv in (-0.66, -0.56):
            canvas.band(face_u, ident.eye_v + dv + 0.1, 0.33, 0.03, 0.011, skin * 0.7, opacity=0.7)
        for side in (-1.0, 1.0):
            u, sq = place(side * (ident.nose_width + 0.1), 0.85)
            canvas.band(u, (ident.nose_v + ident.mouth_v) * 0.5, 0.16, 0.02, 0.011, skin * 0.7,
                        phi=side * 1.25, squash=sq, opacity=0.7)

    # eyes with make-up, bags and lids
    eye_open = ident.eye_height * img.eye_openness
    for side in (-1.0, 1.0):
        u, sq = place(side * ident.eye_dx, 0.75)
        if ident.bags:
            canvas.band(u, ident.eye_v + eye_open + 0.05, ident.eye_width * 0.9, -0.03, 0.02,
                        skin * np.array([0.72, 0.64, 0.7], np.float32), squash=sq, opacity=0.7)
        if ident.heavy_makeup:
            canvas.ellipse(u, ident.eye_v - eye_open * 0.6, ident.eye_width * 1.15,
                           eye_open * 1.1 + 0.03, ident.eyeshadow, squash=sq, opacity=0.6)
        canvas.eye(u, ident.eye_v, ident.eye_width, eye_open, 0.42 * ident.eye_width,
                   img.gaze * ident.eye_width, ident.iris, SCLERA, squash=sq)
        canvas.band(u, ident.eye_v - eye_open * 0.55, ident.eye_width * 1.04, eye_open * 0.55,
                    0.024 if ident.heavy_makeup else 0.013, LASH, squash=sq)
    # brows
    for side in (-1.0, 1.0):
        u, sq = place(side * (ident.eye_dx + 0.02), 0.72)
        canvas.band(u, ident.eye_v - ident.brow_gap - img.brow_raise, ident.brow_length,
                    ident.brow_arch, ident.brow_thickness, ident.brow_colour,
                    phi=side * ident.brow_tilt, squash=sq, blunt=True)
    # nose
    ns, nv = ident.nose_scale, ident.nose_v
    tip_u, sq = place(0.0, 1.15)
    narrow = 0.7 if ident.pointy_nose else 1.0
    for side in (-1.0, 1.0):
        u, bsq = place(side * 0.055 * ns * narrow, 1.0)
        canvas.band(u, (ident.eye_v + nv) * 0.5 + 0.05, (nv - ident.eye_v) * 0.4, 0.0, 0.012,
                    skin * 0.8, phi=math.pi / 2 - side * (0.12 if ident.pointy_nose else 0.0),
                    squash=bsq, opacity=0.35)
        canvas.ellipse(tip_u + side * 0.075 * ns * narrow * sq, nv + 0.005, 0.05 * ns * narrow,
                       0.045 * ns, skin * 0.9, squash=sq)
    canvas.ellipse(tip_u, nv - 0.01 * (2.0 if ident.pointy_nose else 1.0), 0.055 * ns * narrow,
                   0.05 * ns * (1.5 if ident.pointy_nose else 1.0), np.minimum(skin * 1.08, 1.0),
                   squash=sq)
    canvas.band(tip_u, nv + 0.05 * ns, 0.1 * ns * narrow, -0.02, 0.012, skin * 0.68, squash=sq)
    for side in (-1.0, 1.0):
        canvas.ellipse(tip_u + side * 0.05 * ns * narrow * sq, nv + 0.035 * ns, 0.024 * ns, 0.014 * ns,
                       skin * 0.45, squash=sq)

    # facial hair under the mouth, then the mouth, then the mustache over it
    mouth_u, msq = place(0.0, 0.9)
    if ident.beard:
        canvas.region(face_u, 0.05, fw + 0.04, fh + 0.1, ident.beard_colour, taper=ident.jaw_taper,
                      cut=(ident.nose_v + 0.12, 0, -0.2, 0.02, 30.0, 0.0), keep_below=True,
                      stripes=(70.0, 0.15, 0.0, 0.0))
    if ident.goatee:
        canvas.ellipse(mouth_u, ident.mouth_v + 0.25, 0.15, 0.2, ident.beard_colour, squash=msq)
    if ident.sideburns:
        for side in (-1.0, 1.0):
            u, sq = place(side * (fw - 0.07), 0.2)
            canvas.ellipse(u, ident.eye_v + 0.2, 0.075, 0.24, ident.beard_colour, squash=sq)
    _draw_mouth(canvas, ident, img, mouth_u, msq)
    if ident.mustache:
        canvas.band(mouth_u, ident.mouth_v - img.mouth_opening * 0.5 - 2.0 * ident.upper_lip - 0.03,
                    ident.mouth_width * 0.95, 0.05, 0.038, ident.beard_colour, squash=msq, blunt=True)

    # front hair, hat, earrings, glasses, occluders
    if not ident.bald:
        canvas.region(hair_u, -0.12, fw + 0.1 + vol, fh + 0.06 + vol, hair,
                      cut=(ident.hairline[0] + 0.12,) + ident.hairline[1:], stripes=ident.hair_stripes)
        if ident.hair_length >= 1:
            for side in (-1.0, 1.0):
                u, sq = place(side * (fw - 0.03 + 0.3 * vol), -0.1)
                length = 0.95 if ident.hair_length == 2 else 0.65
                canvas.region(u, 0.1 + length * 0.5 - 0.35, 0.16 + 0.5 * vol, length, hair,
                              squash=sq, stripes=ident.hair_stripes)
    if img.hat:
        _draw_hat(canvas, ident, img, hair_u)
    if img.earrings:
        for side in (-1.0, 1.0):
            u, _ = place(side * fw * 0.97, -0.05)
            canvas.ellipse(u, ear_v + 0.24, 0.04, 0.05, ident.metal)
    if img.glasses:
        _draw_glasses(canvas, ident, place)
    for shape in img.occluders:
        _draw_blob(canvas, shape)

    # camera: light, blur (noise is added by the caller, which owns the generator)
    canvas.light(img.light_gx, img.light_gy, img.gain, img.offset)
    canvas.blur(img.blur_sigma * size / 112.0)


SCLERA = np.array([0.93, 0.91, 0.88], np.float32)
LASH = np.array([0.12, 0.08, 0.07], np.float32)
MOUTH_INSIDE = np.array([0.3, 0.08, 0.09], np.float32)
TEETH = np.array([0.95, 0.93, 0.88], np.float32)


def _draw_mouth(canvas: Canvas, ident: SimpleNamespace, img: SimpleNamespace, mouth_u: float,
                squash: float) -> None:
    width = ident.mouth_width * (1.0 + 0.18 * img.smile)
    curvature = 0.012 - 0.1 * img.smile
    opening = img.mouth_opening
    v = ident.mouth_v
    if opening > 0.012:
        canvas.band(mouth_u, v, width * 0.92, curvature, opening * 0.5 + 0.004, MOUTH_INSIDE,
                    squash=squash, blunt=True)
        if img.smile > 0.5:
            canvas.band(mouth_u, v - opening * 0.2, width * 0.7, curvature, opening * 0.28, TEETH,
                        squash=squash, blunt=True)
    else:
        canvas.band(mouth_u, v, width * 1.02, curvature, 0.008, ident.lip_colour * 0.55, squash=squash)
    canvas.band(mouth_u, v - opening * 0.5 - ident.upper_lip, width, curvature, ident.upper_lip,
                ident.lip_colour, squash=squash)
    canvas.band(mouth_u, v + opening * 0.5 + ident.lower_lip, width * 0.85, curvature * 0.8,
                ident.lower_lip, ident.lip_colour, squash=squash)


def _draw_hat(canvas: Canvas, ident: SimpleNamespace, img: SimpleNamespace, hair_u: float) -> None:
    fw = ident.face_width
    brim_v = ident.eye_v - 0.55 + 0.04 * img.hat_style
    colour = img.hat_colour
    stripes = (80.0, 0.12, 0.0, 0.0) if img.hat_style == 1 else None
    canvas.region(hair_u, brim_v - 0.5, fw + 0.18 + ident.hair_volume, 0.78, colour,
                  cut=(0.5, img.hat_tilt, 0.0, 0.0, 0.0, 0.0), stripes=stripes)
    if img.hat_style == 0:
        canvas.ellipse(hair_u, brim_v + 0.03, fw + 0.22, 0.1, colour * 0.75)
    elif img.hat_style == 2:
        canvas.ellipse(hair_u, brim_v, fw + 0.6, 0.13, colour * 0.85)


def _draw_glasses(canvas: Canvas, ident: SimpleNamespace, place) -> None:
    a = ident.eye_width * 1.45 + 0.025
    b = max(ident.eye_height * 2.0, 0.12) * ident.lens_aspect
    lens_v = ident.eye_v + 0.01
    centres = []
    for side in (-1.0, 1.0):
        u, sq = place(side * ident.eye_dx, 0.8)
        centres.append((u, sq))
        if ident.sunglasses:
            canvas.ellipse(u, lens_v, a, b, ident.lens_tint, squash=sq, opacity=0.85)
        canvas.ring(u, lens_v, a, b, ident.frame_thickness, ident.frame_colour, squash=sq)
        edge_u, tsq = place(side * (ident.eye_dx + a + 0.12), 0.3)
        canvas.band(edge_u, lens_v - b * 0.4, 0.14, 0.0, ident.frame_thickness, ident.frame_colour,
                    squash=tsq)
    (left, lsq), (right, rsq) = centres
    inner_left, inner_right = left + a * lsq, right - a * rsq
    if inner_right > inner_left:
        canvas.band(0.5 * (inner_left + inner_right), lens_v - b * 0.35,
                    0.5 * (inner_right - inner_left) + 0.01,
                    -0.02, ident.frame_thickness, ident.frame_colour, blunt=True)


def _draw_blob(canvas: Canvas, shape: tuple) -> None:
    """A clutter or occluder shape: (kind, u, v, a, b, phi, colour, opacity)."""
    kind, u, v, a, b, phi, colour, opacity = shape
    if kind == 0:
        canvas.ellipse(u, v, a, b, colour, phi=phi, opacity=opacity)
    elif kind == 1:
        canvas.box(u, v, a, b, colour, phi=phi, opacity=opacity)
    else:
        canvas.band(u, v, a, 0.3 * b, 0.25 * b, colour, phi=phi, opacity=opacity, blunt=True)
