"""The phantom hand: a left hand, palm down (PA view), laid out in millimetres.

Hand coordinates: origin at the distal radius articular surface, +y distal (towards the
fingertips), +x towards the thumb (image right for a left hand). The layout is an adult male
hand; age shrinks it along the growth curve, and skeletal maturity decides which ossification
centres exist, how big they are and whether growth plates have fused. These are the cues a
radiologist (and a CNN) reads bone age from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .growth import REFERENCE_HAND_MM, Subject, hand_length_mm, ramp
from .shapes import Shape, blob, bone_outline, normal, quad, tube, unit

JOINT_MM = 1.6  # joint space between articulating bones (adult)
PLATE_MM = 1.6  # open growth plate: the dark gap between epiphysis and metaphysis


@dataclass(frozen=True)
class RayDef:
    base: tuple[float, float]  # metacarpal base
    angle: float  # metacarpal direction, degrees from +y towards the thumb
    lengths: tuple[float, float, float, float]  # metacarpal, proximal, middle (0: thumb), distal
    width: float  # width factor of the whole ray
    spread: float  # extra angle at the MCP joint when the fingers are spread (spread = 1)


RAYS = {
    "thumb": RayDef((23.0, 21.5), 33.0, (46, 32, 0, 25), 1.12, 6.0),
    "index": RayDef((11.0, 25.5), 10.0, (68, 40, 23, 17), 1.0, 6.0),
    "middle": RayDef((0.0, 27.0), 0.0, (65, 45, 28, 19), 1.03, 0.0),
    "ring": RayDef((-10.0, 25.5), -8.0, (58, 42, 26, 19), 0.93, -6.0),
    "little": RayDef((-20.0, 21.5), -18.0, (54, 33, 18, 17), 0.85, -12.0),
}
# half-widths (shaft, proximal end, distal end) in mm, adult
BONE_WIDTHS = {
    "metacarpal": (3.7, 5.2, 5.8),
    "thumb_metacarpal": (4.0, 5.8, 5.6),
    "proximal": (3.7, 5.8, 4.7),
    "middle": (3.1, 4.8, 3.9),
    "distal": (2.3, 4.1, 3.0),
    "radius": (7.5, 7.5, 13.5),
    "ulna": (5.0, 5.0, 7.0),
}


@dataclass(frozen=True)
class EpiphysisDef:
    onset: float  # boy-years when the ossification centre appears
    fuse_start: float
    fuse_end: float
    depth: float  # cartilage zone (epiphysis + plate) in metaphysis half-widths
    round_young: float  # height/width of a new centre (round)
    round_adult: float  # height/width when it caps the metaphysis (flat)


EPIPHYSES = {
    "radius": EpiphysisDef(1.1, 15.9, 17.4, 0.55, 0.65, 0.26),
    "ulna": EpiphysisDef(6.5, 15.6, 17.0, 0.85, 0.8, 0.45),
    "metacarpal": EpiphysisDef(1.8, 14.8, 16.0, 1.15, 0.85, 0.6),
    "thumb_metacarpal": EpiphysisDef(2.4, 14.6, 15.8, 0.75, 0.75, 0.35),
    "proximal": EpiphysisDef(1.7, 14.8, 15.9, 0.75, 0.75, 0.32),
    "middle": EpiphysisDef(2.4, 14.7, 15.7, 0.75, 0.75, 0.32),
    "distal": EpiphysisDef(2.0, 14.2, 15.2, 0.8, 0.75, 0.36),
}

# centre, half-across, half-along, angle, superellipse power, onset (boy-years).
# Order of appearance: capitate, hamate, triquetrum, lunate, trapezium, trapezoid, scaphoid, pisiform.
CARPALS = {
    "capitate": ((1.5, 18.0), 5.2, 8.5, 0.0, 2.6, 0.15),
    "hamate": ((-9.0, 17.5), 5.0, 7.5, -12.0, 2.4, 0.3),
    "triquetrum": ((-10.5, 5.5), 4.5, 4.3, 30.0, 2.2, 2.6),
    "lunate": ((1.0, 4.5), 5.3, 4.5, 0.0, 2.2, 3.6),
    "trapezium": ((19.5, 16.0), 5.3, 5.3, 30.0, 2.4, 5.4),
    "trapezoid": ((11.0, 19.0), 3.8, 5.0, 10.0, 2.4, 5.7),
    "scaphoid": ((13.0, 7.0), 4.3, 8.0, 45.0, 2.0, 5.8),
    "pisiform": ((-13.5, 9.0), 3.6, 3.6, 0.0, 2.0, 10.8),
}
CARPAL_FULL_SIZE_AT = 14.0  # boy-years when carpals reach adult shape


@dataclass
class Hand:
    """Everything the renderer needs, in hand millimetres."""

    bones: list[list[Shape]]  # parts of one bone merge by max; separate bones add (they overlap in projection)
    soft: list[np.ndarray]  # soft-tissue polygons (hand + forearm), drawn as one silhouette
    keypoints: dict[str, np.ndarray]
    outline: np.ndarray  # points of the hand (not the forearm) that must stay inside the image
    pad: float  # soft-tissue margin around the bones, mm
    carpals: list[str] = field(default_factory=list)  # ossified carpals (for tests and reports)


@dataclass
class _Tissue:
    """Per-subject constants shared by all bones."""

    scale: float  # length scale (hand length / reference)
    wscale: float  # width scale: bones get relatively stouter with age
    density: float
    cortex: float  # cortical thickness as a fraction of the half-width
    medulla: float  # density of the medulla relative to cortex
    maturity: dict[str, float]  # per-group maturity (boy-years), jittered a little
    cartilage: float  # unossified fraction of the bone ends in infants


def build_hand(subject: Subject, rng: np.random.Generator) -> Hand:
    m = subject.maturity
    scale = hand_length_mm(subject.true_age, subject.male) / REFERENCE_HAND_MM * float(np.exp(rng.normal(0, 0.04)))
    tissue = _Tissue(
        scale=scale,
        wscale=scale * (0.74 + 0.26 * ramp(m, 0.0, 16.0)) * float(np.exp(rng.normal(0, 0.04))),
        density=0.8 + 0.2 * ramp(m, 0.0, 12.0),
        cortex=0.25 + 0.2 * ramp(m, 1.0, 15.0),
        medulla=0.72 - 0.32 * ramp(m, 1.0, 15.0),
        maturity={k: m + float(rng.normal(0, 0.3)) for k in list(EPIPHYSES) + list(CARPALS)},
        cartilage=0.07 * (1.0 - ramp(m, 0.0, 7.0)),
    )
    pad = 6.0 * scale * (1.0 + 0.8 * (1.0 - ramp(m, 0.0, 10.0))) * float(np.exp(rng.normal(0, 0.08)))
    spread = float(rng.uniform(0.15, 1.1))
    thumb_abduction = float(rng.uniform(-10.0, 12.0))

    bones: list[list[Shape]] = []
    rays = {name: _ray(name, ray, tissue, spread, thumb_abduction, rng, bones) for name, ray in RAYS.items()}
    carpals = _carpals(tissue, bones)
    _forearm_bones(tissue, bones)

    soft, outline = _soft_tissue(rays, tissue, pad)
    middle_tip, middle_dir = rays["middle"]["tip"]
    thumb_tip, thumb_dir = rays["thumb"]["tip"]
    capitate = np.array(CARPALS["capitate"][0]) * scale
    keypoints = {
        "middle_finger_tip": middle_tip + middle_dir * 0.35 * pad,
        "thumb_tip": thumb_tip + thumb_dir * 0.35 * pad,
        "capitate": capitate,
    }
    return Hand(bones=bones, soft=soft, keypoints=keypoints, outline=outline, pad=pad, carpals=carpals)


def _ray(name: str, ray: RayDef, t: _Tissue, spread: float, thumb_abduction: float,
         rng: np.random.Generator, bones: list) -> dict:
    """One finger ray: metacarpal and phalanges, joint to joint; returns its joints for the soft tissue."""
    kinds = ["thumb_metacarpal" if name == "thumb" else "metacarpal", "proximal", "middle", "distal"]
    angle = ray.angle + (thumb_abduction if name == "thumb" else 0.0)
    cursor = np.array(ray.base, float) * t.scale
    joints, widths = [cursor.copy()], []
    jitter = float(np.exp(rng.normal(0, 0.02)))
    direction = unit(angle)
    for k, (kind, length) in enumerate(zip(kinds, ray.lengths)):
        if length == 0:
            continue
        if k == 1:
            angle += ray.spread * spread + float(rng.normal(0, 1.5))
        elif k > 1:
            angle += float(rng.normal(0, 1.5)) + (4.0 if name == "thumb" else 0.0)
        direction = unit(angle)
        end = cursor + direction * length * t.scale * jitter
        hws = tuple(w * ray.width * t.wscale for w in BONE_WIDTHS[kind])
        gap = direction * 0.5 * JOINT_MM * t.scale
        ep_end = "end" if kind == "metacarpal" else "start"
        bones.append(_long_bone(cursor + gap, end - gap, hws, ep_end, kind, t))
        widths.append(hws)
        cursor = end
        joints.append(cursor.copy())
    return {"joints": joints, "widths": widths, "tip": (cursor, direction)}


def _long_bone(p_start, p_end, hws, ep_end: str, kind: str, t: _Tissue) -> list[Shape]:
    """A tubular bone with one epiphysis: absent, growing, capping, fusing or fused with maturity."""
    spec = EPIPHYSES[kind]
    m = t.maturity[kind]
    length = float(np.linalg.norm(p_end - p_start))
    d = (p_end - p_start) / length
    shaft, hw0, hw1 = hws
    hw_meta = hw0 if ep_end == "start" else hw1
    plate = PLATE_MM * t.scale
    zone = spec.depth * hw_meta + plate
    fusion = ramp(m, spec.fuse_start, spec.fuse_end)
    fused = m >= spec.fuse_end
    inset = t.cartilage * length
    a, b = p_start.copy(), p_end.copy()
    if not fused:
        if ep_end == "start":
            a = a + d * zone
        else:
            b = b - d * zone
    if ep_end == "start":
        b = b - d * inset
    else:
        a = a + d * inset
    cap_meta = (0.5 * spec.round_adult * hw_meta) if fused else 0.12 * hw_meta
    cap_other = 0.45 * (hw1 if ep_end == "start" else hw0)
    cap0, cap1 = (cap_meta, cap_other) if ep_end == "start" else (cap_other, cap_meta)
    flare = min(0.22, 25.0 * t.scale / length)  # forearm bones flare over the last few cm only
    outer = bone_outline(a, b, hw0, shaft, hw1, cap0, cap1, flare)
    c = t.cortex
    inner = bone_outline(a + d * 0.5 * c * hw0, b - d * 0.5 * c * hw1, hw0 * (1 - 0.5 * c), shaft * (1 - c),
                         hw1 * (1 - 0.5 * c), cap0 * 0.8, cap1 * 0.8, flare)
    parts = [Shape(outer, t.density, inner, t.density * t.medulla)]
    if fused or m < spec.onset:
        return parts
    grow = min(max((m - spec.onset) / (12.5 - spec.onset), 0.0), 1.0) ** 0.8
    ew = (0.3 + 0.75 * grow) * hw_meta
    gap = plate * (1.0 - 0.8 * fusion)
    eh = min(ew * (spec.round_young + (spec.round_adult - spec.round_young) * grow), 0.5 * (zone - gap))
    meta_end, out = (a, -d) if ep_end == "start" else (b, d)
    centre = meta_end + out * (gap + eh)
    ang = float(np.degrees(np.arctan2(d[0], d[1])))
    parts.append(Shape(blob(centre, ew, eh, ang, 2.4, 20), t.density * 0.95,
                       blob(centre, ew * (1 - 0.6 * c), eh * (1 - 0.8 * c), ang, 2.4, 20), t.density * t.medulla))
    if fusion > 0:
        w = min(ew, hw_meta) * 0.97
        parts.append(Shape(quad(meta_end, centre, w, w), t.density * t.medulla * fusion ** 1.5))
    return parts


def _carpals(t: _Tissue, bones: list) -> list[str]:
    """Carpal ossification centres: appear in a fixed order, start round and small, grow into shape."""
    present = []
    for name, (centre, across, along, angle, power, onset) in CARPALS.items():
        m = t.maturity[name]
        if m < onset:
            continue
        grow = min(max((m - onset) / max(CARPAL_FULL_SIZE_AT - onset, 3.0), 0.0), 1.0) ** 0.65
        size = 0.22 + 0.78 * grow
        r = np.sqrt(across * along)
        size *= 1.08 * t.scale * (0.85 + 0.15 * ramp(t.maturity[name], 0.0, 16.0))
        ax = (r + (across - r) * grow) * size
        ay = (r + (along - r) * grow) * size
        p = 2.0 + (power - 2.0) * grow
        c = np.asarray(centre) * t.scale
        core = 1.0 - t.cortex * 0.7
        bones.append([Shape(blob(c, ax, ay, angle, p, 28), t.density * 0.9,
                            blob(c, ax * core, ay * core, angle, p, 28), t.density * t.medulla)])
        present.append(name)
    return present


def _forearm_bones(t: _Tissue, bones: list) -> None:
    """Distal radius and ulna; their shafts run far out of the picture."""
    far = -3.0 * REFERENCE_HAND_MM * t.scale
    for kind, top, bottom in (("radius", (8.5, -0.5), (3.0, far)), ("ulna", (-17.0, -2.5), (-12.0, far))):
        hws = tuple(w * t.wscale for w in BONE_WIDTHS[kind])
        start = np.array(bottom) * np.array([t.scale, 1.0])
        bones.append(_long_bone(start, np.array(top) * t.scale, hws, "end", kind, t))


def _soft_tissue(rays: dict, t: _Tissue, pad: float) -> tuple[list[np.ndarray], np.ndarray]:
    """The silhouette: palm (with webs), thenar eminence, five fingers and the forearm."""
    polys = []
    for name, ray in rays.items():
        joints, widths = ray["joints"], ray["widths"]
        start = 0.0 if name == "thumb" else 0.45
        nodes = [joints[0] + (joints[1] - joints[0]) * start] + joints[1:]
        hw = [widths[0][0] + pad * (2.0 if name == "thumb" else 1.2), widths[0][2] + pad * 1.05]
        hw += [w[2] + pad * (0.95 - 0.06 * i) for i, w in enumerate(widths[1:])]
        polys.append(tube(nodes, hw, tip=pad * 1.05))

    def side(name: str, bone: int, frac: float, end: int, out: float) -> np.ndarray:
        """A point on the soft-tissue edge beside a bone: `out` > 0 towards the ulna (-x), < 0 to the thumb."""
        j = rays[name]["joints"]
        d = (j[bone + 1] - j[bone]) / np.linalg.norm(j[bone + 1] - j[bone])
        hw = rays[name]["widths"][bone][end]
        return j[bone] + (j[bone + 1] - j[bone]) * frac + normal(d) * np.sign(out) * (hw + abs(out))

    s = t.scale
    ulna_side = np.array([(-17.0 - 7.2) * s - pad * 1.6, -6.0 * s])
    radius_side = np.array([(8.5 + 13.5) * s + pad * 2.0, -6.0 * s])
    web = lambda a, b: 0.5 * (side(a, 1, 0.28, 0, 0.0) + side(b, 1, 0.28, 0, 0.0))  # noqa: E731
    palm = np.array([
        ulna_side,
        side("little", 0, 0.0, 1, pad * 1.8),
        side("little", 0, 1.0, 2, pad),
        side("little", 1, 0.28, 0, pad),
        web("little", "ring"), web("ring", "middle"), web("middle", "index"),
        side("index", 1, 0.28, 0, -pad),
        side("index", 0, 1.0, 2, -pad),
        side("index", 0, 0.5, 0, -pad),
        radius_side,
    ])
    thumb_web = 0.5 * side("index", 0, 0.75, 0, -pad) + 0.5 * side("thumb", 0, 1.0, 2, pad)
    thenar = np.array([
        radius_side,
        0.5 * (radius_side + side("thumb", 0, 0.0, 1, -pad * 2.2)) + np.array([pad * 0.4, 0.0]),
        side("thumb", 0, 0.0, 1, -pad * 2.2),
        side("thumb", 0, 0.5, 0, -pad * 2.0),
        side("thumb", 0, 1.0, 2, pad),
        thumb_web,
        side("index", 0, 0.85, 0, -pad),
        np.array(CARPALS["capitate"][0]) * s,
    ])
    forearm_far = -3.0 * REFERENCE_HAND_MM * s
    forearm = np.array([ulna_side, radius_side, [radius_side[0] + 25 * s, forearm_far],
                        [ulna_side[0] - 25 * s, forearm_far]])
    polys += [palm, thenar, forearm]
    outline = np.vstack(polys[:-1])
    return polys, outline
