"""Frontal cartoon faces drawn with Pillow from an :class:`IdentityProfile`.

:func:`sample_variation` draws what changes from one photo of a person to the next
(expression, pose, lighting, background, clothes, occlusion); :func:`render_face` draws
the face at twice the target size, applies the pose as one affine warp, halves the
resolution (anti-aliasing), composites it on the background and applies the lighting.
About a millisecond per 112x112 image on one core.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .identities import IdentityProfile

SMILE_PROBABILITY = {"rarely": 0.2, "often": 0.75}
MOUTH_OPEN_PROBABILITY = 0.35
SUPERSAMPLING = 2


@dataclass(frozen=True)
class ImageVariation:
    """Per-photo conditions. Angles in degrees, shifts and sizes in fractions of the image."""

    smiling: bool
    mouth_open: bool
    angle: float
    scale: float
    shift: tuple[float, float]
    brightness: float
    contrast: float
    light_direction: float  # radians
    light_strength: float
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient end colours
    background_texture: int  # seed of the low-frequency background noise
    clothes: tuple[int, int, int]
    occlusion: tuple[float, float, float, float, tuple[int, int, int]] | None  # x, y, w, h, rgb


def sample_variation(profile: IdentityProfile, rng: np.random.Generator,
                     occlusion_probability: float = 0.25) -> ImageVariation:
    """Draw the conditions of one photo of ``profile``."""
    smiling = bool(rng.random() < SMILE_PROBABILITY[profile.attributes["smile_tendency"]])
    occlusion = None
    if rng.random() < occlusion_probability:
        w, h = rng.uniform(0.12, 0.3, size=2)
        # Objects enter from the edges (hands, microphones, other heads), not the centre.
        x = float(rng.choice([rng.uniform(-0.05, 0.2), rng.uniform(0.65, 0.95)]))
        y = float(rng.uniform(0.35, 0.9))
        occlusion = (x, y, float(w), float(h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    return ImageVariation(
        smiling=smiling,
        mouth_open=bool(rng.random() < MOUTH_OPEN_PROBABILITY),
        angle=float(rng.normal(0.0, 5.0)),
        scale=float(rng.uniform(0.92, 1.08)),
        shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        brightness=float(rng.uniform(0.8, 1.15)),
        contrast=float(rng.uniform(0.8, 1.15)),
        light_direction=float(rng.uniform(0.0, 2.0 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.3)),
        background=(tuple(int(c) for c in rng.integers(30, 230, 3)),
                    tuple(int(c) for c in rng.integers(30, 230, 3))),
        background_texture=int(rng.integers(2**31)),
        clothes=tuple(int(c) for c in rng.integers(20, 235, 3)),
        occlusion=occlusion,
    )


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor))) for c in rgb)


class _Canvas:
    """ImageDraw in unit coordinates (0..1 across the canvas), RGBA."""

    def __init__(self, pixels: int):
        self.pixels = pixels
        self.image = Image.new("RGBA", (pixels, pixels), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.image)

    def _box(self, cx, cy, rx, ry):
        p = self.pixels
        return [(cx - rx) * p, (cy - ry) * p, (cx + rx) * p, (cy + ry) * p]

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=0.0):
        self.draw.ellipse(self._box(cx, cy, rx, ry), fill=fill, outline=outline,
                          width=max(1, round(width * self.pixels)) if outline else 0)

    def chord(self, cx, cy, rx, ry, start, end, fill):
        self.draw.chord(self._box(cx, cy, rx, ry), start, end, fill=fill)

    def arc(self, cx, cy, rx, ry, start, end, fill, width):
        self.draw.arc(self._box(cx, cy, rx, ry), start, end, fill=fill,
                      width=max(1, round(width * self.pixels)))

    def rounded_rectangle(self, cx, cy, rx, ry, radius, fill):
        self.draw.rounded_rectangle(self._box(cx, cy, rx, ry), radius=radius * self.pixels,
                                    fill=fill)

    def polygon(self, points, fill):
        self.draw.polygon([(x * self.pixels, y * self.pixels) for x, y in points], fill=fill)

    def line(self, points, fill, width):
        self.draw.line([(x * self.pixels, y * self.pixels) for x, y in points], fill=fill,
                       width=max(1, round(width * self.pixels)), joint="curve")


@dataclass(frozen=True)
class _Layout:
    """Where the parts of one identity's face go, in canvas units (face centred at 0.5, 0.5)."""

    rx: float  # face half-width
    ry: float  # face half-height
    volume: float  # hair thickness
    eye_y: float
    eye_dx: float  # half the distance between the eyes
    eye_rx: float
    eye_ry: float
    brow_y: float
    mouth_y: float
    mouth_rx: float
    lip: float  # lip thickness
    lip_rgb: tuple[int, int, int]

    @classmethod
    def of(cls, profile: IdentityProfile, variation: ImageVariation) -> _Layout:
        a, g = profile.attributes, profile.geometry_value
        rx = 0.25 + 0.022 * g("face_width")
        ry = 0.32 + 0.022 * g("face_height")
        rx, ry = {"oval": (rx, ry), "round": (rx * 1.08, ry * 0.94), "long": (rx * 0.92, ry * 1.08),
                  "square": (rx * 1.02, ry)}[a["face_shape"]]
        eye_y = 0.5 - 0.035 + 0.025 * g("eye_height")
        eye_rx = 0.045 + 0.007 * g("eye_size")
        eye_ry = eye_rx * (0.35 if a["eye_shape"] == "narrow" else 0.6)
        skin = profile.colours["skin"]
        natural_lips = _shade((200, 110, 100), 0.6 + 0.4 * skin[0] / 255)
        return cls(
            rx=rx, ry=ry, volume=0.04 + 0.02 * g("hair_volume"),
            eye_y=eye_y, eye_dx=0.1 + 0.018 * g("eye_spacing"), eye_rx=eye_rx, eye_ry=eye_ry,
            brow_y=eye_y - eye_ry - 0.03 - 0.012 * g("brow_height"),
            mouth_y=0.5 + ry * 0.52 + 0.02 * g("mouth_height"),
            mouth_rx=0.075 + 0.012 * g("mouth_width") + (0.012 if variation.smiling else 0.0),
            lip=0.011 if a["lip_size"] == "thin" else 0.022,
            lip_rgb=profile.colours["lipstick"] if a["makeup"] != "none" else natural_lips)


CX, CY = 0.5, 0.5  # face centre on the canvas


def _draw_behind_head(canvas: _Canvas, profile: IdentityProfile, variation: ImageVariation, f: _Layout) -> None:
    """Long hair, neck and shoulders."""
    a, g, hair = profile.attributes, profile.geometry_value, profile.colours["hair"]
    if a["hair_style"] in ("straight", "wavy", "curly"):
        top, bottom = CY - f.ry * 0.55, CY + f.ry * (0.85 + 0.25 * g("hair_volume"))
        side = f.rx + f.volume
        if a["hair_style"] == "curly":
            for i in range(9):
                t = i / 8
                for sign in (-1, 1):
                    canvas.ellipse(CX + sign * (side - 0.02), top + t * (bottom - top), 0.07, 0.07, fill=hair)
        canvas.rounded_rectangle(CX, (top + bottom) / 2, side, (bottom - top) / 2, 0.08, fill=hair)
        if a["hair_style"] == "wavy":
            for i in range(6):
                y = top + (i + 0.5) * (bottom - top) / 6
                for sign in (-1, 1):
                    canvas.ellipse(CX + sign * side, y, 0.03, 0.035, fill=hair)
    skin = profile.colours["skin"]
    canvas.rounded_rectangle(CX, CY + f.ry + 0.08, 0.1 + 0.02 * g("jaw_width"), 0.14, 0.03, fill=_shade(skin, 0.85))
    canvas.ellipse(CX, CY + f.ry + 0.33, 0.42, 0.22, fill=variation.clothes)


def _draw_head(canvas: _Canvas, profile: IdentityProfile, f: _Layout) -> None:
    """Ears, earrings, the face, blush, wrinkles and the beard."""
    a, g, skin, hair = profile.attributes, profile.geometry_value, profile.colours["skin"], profile.colours["hair"]
    ear = 0.04 * (1.0 + 0.2 * g("ear_size"))
    for sign in (-1, 1):
        canvas.ellipse(CX + sign * f.rx * 0.98, CY + 0.01, ear, ear * 1.6, fill=_shade(skin, 0.95))
        if a["earrings"]:
            canvas.ellipse(CX + sign * f.rx * 0.98, CY + ear * 1.6 + 0.02, 0.016, 0.016, fill=(230, 190, 60))
    if a["face_shape"] == "square":
        canvas.rounded_rectangle(CX, CY, f.rx, f.ry, 0.11, fill=skin)
    else:
        canvas.ellipse(CX, CY, f.rx, f.ry, fill=skin)
    if a["makeup"] == "heavy":
        for sign in (-1, 1):
            canvas.ellipse(CX + sign * f.rx * 0.55, CY + f.ry * 0.25, 0.05, 0.035, fill=(230, 140, 140))
    if a["age"] == "old":
        wrinkle = _shade(skin, 0.75)
        for k in range(2):
            canvas.arc(CX, CY - f.ry * (0.6 - 0.08 * k) + 0.03, f.rx * 0.45, 0.03, 200, 340, wrinkle, 0.006)
        for sign in (-1, 1):
            canvas.line([(CX + sign * 0.06, f.mouth_y - 0.08), (CX + sign * (f.mouth_rx + 0.02), f.mouth_y)],
                        wrinkle, 0.006)
    # The beard stops at the mouth line; the mouth is drawn over it.
    if a["beard"] == "full":
        canvas.chord(CX, CY, f.rx * 1.01, f.ry * 1.01, 12, 168, fill=hair)
        canvas.ellipse(CX, f.mouth_y + 0.03, f.mouth_rx * 1.6, 0.08, fill=hair)
    elif a["beard"] == "goatee":
        canvas.ellipse(CX, CY + f.ry * 0.86, 0.055, 0.065, fill=hair)


def _draw_eyes(canvas: _Canvas, profile: IdentityProfile, f: _Layout) -> None:
    """Eye shadow, eyes, eyebrows and glasses."""
    a, g, c = profile.attributes, profile.geometry_value, profile.colours
    brow_rgb = _shade(c["hair"], 0.55 if a["hair_color"] in ("gray", "blond") else 0.7)
    brow_width = 0.022 if a["eyebrows"] == "bushy" else 0.008
    for sign in (-1, 1):
        ex = CX + sign * f.eye_dx
        if a["makeup"] == "heavy":
            canvas.ellipse(ex, f.eye_y - f.eye_ry * 0.4, f.eye_rx * 1.25, f.eye_ry * 1.6 + 0.01, fill=(120, 80, 130))
        canvas.ellipse(ex, f.eye_y, f.eye_rx, f.eye_ry, fill=(245, 245, 240))
        iris = min(f.eye_ry * 0.95, f.eye_rx * (0.45 + 0.08 * g("iris_size")))
        canvas.ellipse(ex, f.eye_y, iris, iris, fill=c["eye"])
        canvas.ellipse(ex, f.eye_y, iris * 0.45, iris * 0.45, fill=(10, 10, 10))
        if a["makeup"] == "heavy":
            canvas.ellipse(ex, f.eye_y, f.eye_rx, f.eye_ry, outline=(20, 20, 20), width=0.008)
        tilt = 0.01 * g("brow_tilt") * sign
        inner, outer = ex - sign * f.eye_rx * 1.1, ex + sign * f.eye_rx * 1.2
        if a["arched_eyebrows"]:
            points = [(inner, f.brow_y + tilt), (ex, f.brow_y - 0.022), (outer, f.brow_y + 0.012)]
        else:
            points = [(inner, f.brow_y + tilt), (ex, f.brow_y - 0.006), (outer, f.brow_y - tilt)]
        canvas.line(points, brow_rgb, brow_width)
    if a["eyeglasses"]:
        frame, lens_rx = c["frame"], f.eye_rx * 1.45
        for sign in (-1, 1):
            ex = CX + sign * f.eye_dx
            canvas.ellipse(ex, f.eye_y, lens_rx, f.eye_rx * 1.05, outline=frame, width=0.012)
            canvas.line([(ex + sign * lens_rx, f.eye_y), (CX + sign * f.rx * 0.97, f.eye_y - 0.01)], frame, 0.01)
        canvas.line([(CX - f.eye_dx + lens_rx, f.eye_y), (CX + f.eye_dx - lens_rx, f.eye_y)], frame, 0.01)


def _draw_nose_and_mouth(canvas: _Canvas, profile: IdentityProfile, variation: ImageVariation,
                         f: _Layout) -> None:
    a, g, skin, hair = profile.attributes, profile.geometry_value, profile.colours["skin"], profile.colours["hair"]
    big_nose = a["nose_size"] == "big"
    nose_tip = f.eye_y + 0.1 + 0.02 * g("nose_length") + (0.025 if big_nose else 0.0)
    nose_w = (0.028 + 0.007 * g("nose_width")) * (1.5 if big_nose else 1.0)
    canvas.polygon([(CX, f.eye_y + 0.02), (CX - nose_w, nose_tip), (CX + nose_w, nose_tip)], fill=_shade(skin, 0.9))
    canvas.line([(CX - nose_w, nose_tip), (CX + nose_w, nose_tip)], _shade(skin, 0.8), 0.008)
    for sign in (-1, 1):
        canvas.ellipse(CX + sign * nose_w * 0.5, nose_tip - 0.004, 0.008, 0.005, fill=(60, 40, 35))

    mouth_y, mouth_rx, lip, lip_rgb = f.mouth_y, f.mouth_rx, f.lip, f.lip_rgb
    if a["moustache"]:
        canvas.polygon([(CX - mouth_rx * 1.05, mouth_y - 0.005), (CX - 0.02, mouth_y - 0.045),
                        (CX + 0.02, mouth_y - 0.045), (CX + mouth_rx * 1.05, mouth_y - 0.005),
                        (CX, mouth_y - 0.022)], fill=hair)
    inside = (70, 20, 25)
    if variation.mouth_open and variation.smiling:  # open smile with teeth
        open_ry = 0.045
        canvas.chord(CX, mouth_y - 0.01, mouth_rx, open_ry + 0.01, 0, 180, fill=lip_rgb)
        canvas.chord(CX, mouth_y - 0.01, mouth_rx - lip, open_ry + 0.01 - lip, 0, 180, fill=inside)
        canvas.rounded_rectangle(CX, mouth_y, mouth_rx * 0.75, 0.01, 0.004, fill=(245, 245, 235))
    elif variation.mouth_open:
        open_ry = 0.03
        canvas.ellipse(CX, mouth_y, mouth_rx * 0.8, open_ry + lip, fill=lip_rgb)
        canvas.ellipse(CX, mouth_y, mouth_rx * 0.8 - lip, open_ry, fill=inside)
    elif variation.smiling:
        canvas.arc(CX, mouth_y - 0.03, mouth_rx, 0.045, 15, 165, lip_rgb, lip + 0.004)
    else:
        canvas.ellipse(CX, mouth_y - lip * 0.5, mouth_rx, lip, fill=_shade(lip_rgb, 0.9))
        canvas.ellipse(CX, mouth_y + lip * 0.6, mouth_rx * 0.85, lip * 1.1, fill=lip_rgb)


def _draw_top_of_head(canvas: _Canvas, profile: IdentityProfile, f: _Layout) -> None:
    """Hair on top (or a bald head), bangs and the hat."""
    a, g, c = profile.attributes, profile.geometry_value, profile.colours
    hair = c["hair"]
    hairline = CY - f.ry * (0.55 + 0.08 * g("hairline"))
    if a["hair_style"] == "bald":
        canvas.ellipse(CX - f.rx * 0.3, CY - f.ry * 0.75, f.rx * 0.25, f.ry * 0.08, fill=_shade(c["skin"], 1.12))
        if a["hair_color"] != "gray":  # a rim of hair above the ears
            for sign in (-1, 1):
                canvas.ellipse(CX + sign * f.rx * 0.93, CY - f.ry * 0.2, 0.03, 0.08, fill=hair)
    else:
        cap_ry = hairline - (CY - f.ry - f.volume)
        canvas.chord(CX, hairline, f.rx + 0.02, cap_ry, 180, 360, fill=hair)
        for sign in (-1, 1):  # sideburns
            canvas.rounded_rectangle(CX + sign * (f.rx - 0.005), hairline + 0.05, 0.02, 0.07, 0.01, fill=hair)
        if a["hair_style"] == "curly":
            for i in range(11):
                angle = np.pi * (1.0 + i / 10)
                canvas.ellipse(CX + (f.rx + 0.02) * np.cos(angle), hairline + cap_ry * np.sin(angle),
                               0.045, 0.045, fill=hair)
        if a["bangs"]:  # a zig-zag fringe down to just above the brows
            bang_bottom, teeth = f.brow_y - 0.03, 7
            points = [(CX - f.rx * 0.9, hairline - 0.02)]
            for i in range(teeth + 1):
                x = CX - f.rx * 0.85 + i * (1.7 * f.rx / teeth)
                points.append((x, bang_bottom if i % 2 == 0 else bang_bottom - 0.025))
            points.append((CX + f.rx * 0.9, hairline - 0.02))
            canvas.polygon(points, fill=hair)
    if a["hat"]:
        canvas.rounded_rectangle(CX, CY - f.ry * 1.02, f.rx * 0.95, f.ry * 0.33, 0.04, fill=c["hat"])
        canvas.rounded_rectangle(CX, CY - f.ry * 0.7, f.rx * 1.25, 0.022, 0.01, fill=_shade(c["hat"], 0.8))


def _draw_person(canvas: _Canvas, profile: IdentityProfile, variation: ImageVariation) -> None:
    """Back to front: what is behind the head, the head, eyes, nose and mouth, the top of the head."""
    layout = _Layout.of(profile, variation)
    _draw_behind_head(canvas, profile, variation, layout)
    _draw_head(canvas, profile, layout)
    _draw_eyes(canvas, profile, layout)
    _draw_nose_and_mouth(canvas, profile, variation, layout)
    _draw_top_of_head(canvas, profile, layout)


def _background(size: int, variation: ImageVariation) -> np.ndarray:
    start, end = (np.asarray(rgb, dtype=np.float32) for rgb in variation.background)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    texture_rng = np.random.default_rng(variation.background_texture)
    coarse = texture_rng.normal(0.0, 18.0, size=(6, 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    image = start + (end - start) * ramp + texture[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def render_face(profile: IdentityProfile, variation: ImageVariation, size: int = 112) -> np.ndarray:
    """Draw one photo of ``profile``: uint8 array [size, size, 3]."""
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    canvas = _Canvas(size * SUPERSAMPLING)
    _draw_person(canvas, profile, variation)

    # Pose: PIL's affine maps output pixels to input pixels, so pass the inverse warp.
    pixels = canvas.pixels
    theta = np.deg2rad(variation.angle)
    cos, sin = np.cos(theta) / variation.scale, np.sin(theta) / variation.scale
    centre = pixels / 2.0
    tx, ty = variation.shift[0] * pixels, variation.shift[1] * pixels
    ox, oy = centre + tx, centre + ty
    warp = (cos, -sin, centre - cos * ox + sin * oy, sin, cos, centre - sin * ox - cos * oy)
    person = canvas.image.transform((pixels, pixels), Image.AFFINE, warp, Image.BILINEAR)
    person = person.reduce(SUPERSAMPLING)

    composed = Image.fromarray(_background(size, variation)).convert("RGBA")
    composed.alpha_composite(person)
    if variation.occlusion is not None:
        x, y, w, h, rgb = variation.occlusion
        ImageDraw.Draw(composed).rounded_rectangle(
            [x * size, y * size, (x + w) * size, (y + h) * size], radius=0.05 * size, fill=rgb)

    # Lighting: global contrast and brightness times a linear gradient across the face.
    image = np.asarray(composed.convert("RGB"), dtype=np.float32)
    coords = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gradient = (np.cos(variation.light_direction) * coords[None, :]
                + np.sin(variation.light_direction) * coords[:, None])
    gain = variation.brightness * (1.0 + variation.light_strength * gradient)[..., None]
    image = ((image - 128.0) * variation.contrast + 128.0) * gain
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
