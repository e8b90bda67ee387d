"""Draw a :class:`~vlm.world.scene.Scene` with Pillow.

Fast by construction (the world must render >= 100 images/s at 224 px on 2 CPU cores; measured by
``python -m benchmarks speed world``): backgrounds are drawn once per (name, size) and cached, each image
copies one and crops it at a seeded offset for variety, things are plain polygons drawn at 2x and reduced
with a box filter for anti-aliasing.
"""

from __future__ import annotations

import functools
import math
import random

from PIL import Image, ImageDraw

from vlm.world.scene import COLORS, Scene, Thing

SKIN = (224, 172, 130)
HAIR = (90, 60, 35)
OUTLINE = (40, 40, 40)
OUTLINE_ON_DARK = (200, 200, 200)


@functools.lru_cache(maxsize=64)
def _background(name: str, side: int) -> Image.Image:
    """A background texture of (1.25 * side) px, seeded by its name so it is identical everywhere."""
    big = int(side * 1.25)
    rng = random.Random(f"background/{name}")
    img = Image.new("RGB", (big, big))
    d = ImageDraw.Draw(img)
    if name == "grass":
        d.rectangle([0, 0, big, big], fill=(104, 168, 84))
        for _ in range(big * 2):
            x, y = rng.uniform(0, big), rng.uniform(0, big)
            h = rng.uniform(0.01, 0.03) * big
            shade = rng.choice([(84, 146, 66), (124, 186, 98), (92, 156, 72)])
            d.line([x, y, x + rng.uniform(-0.3, 0.3) * h, y - h], fill=shade, width=max(1, big // 200))
    elif name == "beach":
        horizon = int(big * 0.38)
        d.rectangle([0, 0, big, horizon], fill=(90, 160, 215))
        d.rectangle([0, horizon, big, big], fill=(232, 212, 165))
        for k in range(3):
            y = horizon - k * big * 0.06
            d.line([0, y, big, y], fill=(200, 225, 240), width=max(1, big // 150))
        for _ in range(big):
            x, y = rng.uniform(0, big), rng.uniform(horizon, big)
            d.point((x, y), fill=(210, 190, 145))
    elif name == "street":
        d.rectangle([0, 0, big, big], fill=(105, 105, 110))
        d.rectangle([0, 0, big, int(big * 0.12)], fill=(170, 165, 160))
        d.rectangle([0, int(big * 0.88), big, big], fill=(170, 165, 160))
        for lane in (0.5,):
            y = big * lane
            for x in range(0, big, max(4, big // 8)):
                d.rectangle([x, y - big * 0.008, x + big // 16, y + big * 0.008], fill=(235, 235, 235))
    elif name == "kitchen":
        d.rectangle([0, 0, big, big], fill=(228, 224, 210))
        step = max(4, big // 10)
        for t in range(0, big, step):
            d.line([t, 0, t, big], fill=(200, 196, 184), width=1)
            d.line([0, t, big, t], fill=(200, 196, 184), width=1)
        d.rectangle([0, int(big * 0.8), big, big], fill=(150, 105, 70))
    elif name == "snow":
        d.rectangle([0, 0, big, big], fill=(236, 241, 248))
        for _ in range(big // 2):
            x, y, r = rng.uniform(0, big), rng.uniform(0, big), rng.uniform(0.5, 1.5) * big / 224
            d.ellipse([x - r, y - r, x + r, y + r], fill=(200, 212, 230))
    elif name == "night":
        d.rectangle([0, 0, big, big], fill=(18, 24, 58))
        for _ in range(big // 3):
            x, y = rng.uniform(0, big), rng.uniform(0, big)
            d.point((x, y), fill=(230, 230, 200))
        r = big * 0.06
        d.ellipse([big * 0.8 - r, big * 0.12 - r, big * 0.8 + r, big * 0.12 + r], fill=(240, 235, 200))
    else:
        raise ValueError(f"unknown background {name!r}")
    return img


def _regular(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        rr = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + math.pi * k / points
        out.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return out


def _clip(poly: list[tuple[float, float]], nx: float, ny: float, c: float) -> list[tuple[float, float]]:
    """Keep the part of a convex polygon where nx*x + ny*y <= c (Sutherland-Hodgman, one half-plane)."""
    out = []
    for k, p in enumerate(poly):
        q = poly[(k + 1) % len(poly)]
        fp, fq = nx * p[0] + ny * p[1] - c, nx * q[0] + ny * q[1] - c
        if fp <= 0:
            out.append(p)
        if fp * fq < 0:
            t = fp / (fp - fq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _band(cx, cy, r, angle, lo, hi):
    """The part of the disc (cx, cy, r) between offsets lo..hi (in units of r) along direction ``angle``."""
    nx, ny = math.cos(angle), math.sin(angle)
    disc = _regular(cx, cy, r, 48, 0.0)
    base = nx * cx + ny * cy
    part = _clip(disc, nx, ny, base + hi * r)
    return _clip(part, -nx, -ny, -(base + lo * r)) if part else []


def _draw_shape(d: ImageDraw.ImageDraw, t: Thing, s: float) -> None:
    cx, cy, r = t.x * s, t.y * s, t.radius * s
    fill = COLORS[t.color]
    outline = OUTLINE_ON_DARK if t.color == "black" else OUTLINE
    w = max(1, round(s / 160))
    if t.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=w)
        return
    if t.shape == "square":
        h = r * 0.85
        d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill, outline=outline, width=w)
        return
    if t.shape == "triangle":
        poly = _regular(cx, cy + r * 0.15, r * 1.1, 3, -math.pi / 2)
    elif t.shape == "star":
        poly = _star(cx, cy, r * 1.1)
    elif t.shape == "hexagon":
        poly = _regular(cx, cy, r, 6, 0.0)
    elif t.shape == "diamond":
        poly = [(cx, cy - r * 1.1), (cx + r * 0.7, cy), (cx, cy + r * 1.1), (cx - r * 0.7, cy)]
    else:
        raise ValueError(f"unknown shape {t.shape!r}")
    d.polygon(poly, fill=fill, outline=outline, width=w)


def _draw_person(d: ImageDraw.ImageDraw, t: Thing, s: float) -> None:
    # Pictogram inside a box of half-height 1.35 r: head, hair, body in the shirt colour, legs.
    cx, cy, r = t.x * s, t.y * s, t.radius * s / 1.35
    shirt = COLORS[t.color]
    outline = OUTLINE_ON_DARK if t.color == "black" else OUTLINE
    w = max(1, round(s / 200))
    top = cy - 1.3 * r
    hr = 0.36 * r
    hx, hy = cx, top + hr
    if t.gender == "woman":
        # Long hair behind the head, a dress widening to the knees, thin legs.
        d.rectangle([hx - hr * 1.15, hy - hr * 0.2, hx + hr * 1.15, hy + hr * 1.9], fill=HAIR)
        d.ellipse([hx - hr * 1.15, hy - hr * 1.15, hx + hr * 1.15, hy + hr * 1.15], fill=HAIR)
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=SKIN, outline=outline, width=w)
        body_top = hy + hr * 1.1
        hem = body_top + 1.25 * r
        d.polygon([(cx - 0.28 * r, body_top), (cx + 0.28 * r, body_top), (cx + 0.62 * r, hem),
                   (cx - 0.62 * r, hem)], fill=shirt, outline=outline, width=w)
        for side in (-1, 1):
            lx = cx + side * 0.2 * r
            d.rectangle([lx - 0.07 * r, hem, lx + 0.07 * r, cy + 1.3 * r], fill=SKIN)
    else:
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=SKIN, outline=outline, width=w)
        # Short hair: a cap on the top of the head.
        d.chord([hx - hr, hy - hr, hx + hr, hy + hr], 180, 360, fill=HAIR)
        body_top = hy + hr * 1.1
        waist = body_top + 0.95 * r
        d.rectangle([cx - 0.42 * r, body_top, cx + 0.42 * r, waist], fill=shirt, outline=outline, width=w)
        for side in (-1, 1):
            lx = cx + side * 0.2 * r
            d.rectangle([lx - 0.16 * r, waist, lx + 0.16 * r, cy + 1.3 * r], fill=(50, 55, 80))
    for side in (-1, 1):  # arms
        d.line([cx + side * 0.4 * r, body_top + 0.1 * r, cx + side * 0.75 * r, body_top + 0.8 * r],
               fill=SKIN, width=max(1, round(0.12 * r)))


def _draw_badge(d: ImageDraw.ImageDraw, t: Thing, s: float) -> None:
    cx, cy, r = t.x * s, t.y * s, t.radius * s
    body, mark = COLORS[t.color], COLORS[t.marking_color or "black"]
    w = max(1, round(s / 160))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=body, outline=OUTLINE, width=w)
    k = t.fine_class
    polys: list = []
    if k == 0:  # two bands
        polys = [_band(cx, cy, r, math.pi / 2, a, a + 0.22) for a in (-0.45, 0.23)]
    elif k == 1:  # three bands
        polys = [_band(cx, cy, r, math.pi / 2, a, a + 0.22) for a in (-0.6, -0.11, 0.38)]
    elif k == 2:  # two diagonal bands
        polys = [_band(cx, cy, r, math.pi / 4, a, a + 0.22) for a in (-0.45, 0.23)]
    elif k in (3, 4):  # one or two rings
        radii = (0.55,) if k == 3 else (0.7, 0.38)
        for rr in radii:
            q = rr * r
            d.ellipse([cx - q, cy - q, cx + q, cy + q], outline=mark, width=max(1, round(0.13 * r)))
    elif k in (5, 6):  # sparse or dense spots
        pts = ([(-0.4, -0.4), (0.4, -0.4), (-0.4, 0.4), (0.4, 0.4)] if k == 5 else
               [(a, b) for a in (-0.5, 0, 0.5) for b in (-0.5, 0, 0.5)])
        q = (0.17 if k == 5 else 0.12) * r
        for a, b in pts:
            d.ellipse([cx + a * r - q, cy + b * r - q, cx + a * r + q, cy + b * r + q], fill=mark)
    elif k in (7, 8):  # upright or diagonal cross
        phase = 0.0 if k == 7 else math.pi / 4
        polys = [_band(cx, cy, r, phase + a, -0.12, 0.12) for a in (0.0, math.pi / 2)]
    elif k == 9:  # half disc
        polys = [_band(cx, cy, r, 0.0, -1.0, 0.0)]
    elif k == 10:  # two opposite quarters
        for a0 in (0.0, math.pi):
            quarter = _clip(_clip(_regular(cx, cy, r, 48, 0.0), -math.cos(a0), -math.sin(a0),
                                  -(math.cos(a0) * cx + math.sin(a0) * cy)),
                            math.sin(a0), -math.cos(a0), math.sin(a0) * cx - math.cos(a0) * cy)
            polys.append(quarter)
    elif k == 11:  # a star in the centre
        polys = [_star(cx, cy, 0.55 * r)]
    else:
        raise ValueError(f"unknown fine-grained class index {k!r}")
    for p in polys:
        if len(p) >= 3:
            d.polygon(p, fill=mark)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=OUTLINE, width=w)


def render(scene: Scene, size: int = 224, *, supersample: int = 2, jitter_seed: int | None = 0) -> Image.Image:
    """Render a scene to an RGB image of ``size`` x ``size`` pixels.

    Args:
        scene: the scene graph to draw.
        size: output side in pixels.
        supersample: draw at this multiple of ``size`` and box-filter down (anti-aliasing); 1 is fastest.
        jitter_seed: seeds the crop offset of the background texture (same seed, same pixels); None
            uses the top-left crop.

    Example:
        >>> from vlm.world.scene import Scene, Thing
        >>> img = render(Scene("grass", [Thing("shape", "red", "large", 0.5, 0.5, shape="circle")]), 64)
        >>> img.size, img.getpixel((32, 32))
        ((64, 64), (214, 39, 40))
    """
    s = size * supersample
    bg = _background(scene.background, s)
    if jitter_seed is None:
        ox = oy = 0
    else:
        rng = random.Random(jitter_seed)
        ox, oy = rng.randrange(bg.width - s + 1), rng.randrange(bg.height - s + 1)
    img = bg.crop((ox, oy, ox + s, oy + s))
    d = ImageDraw.Draw(img)
    # Draw top to bottom so that things lower in the picture (nearer) overlap farther ones.
    for t in sorted(scene.things, key=lambda t: t.y):
        if t.kind == "shape":
            _draw_shape(d, t, s)
        elif t.kind == "person":
            _draw_person(d, t, s)
        elif t.kind == "badge":
            _draw_badge(d, t, s)
        else:
            raise ValueError(f"unknown thing kind {t.kind!r}")
    return img.reduce(supersample) if supersample > 1 else img
