"""The 308-keypoint set ("Sociopticon / Goliath 308", spec Appendix A) and COCO-17.

Names are generated from the appendix's description; the flip table is the appendix's table
verbatim (flip pairs do not always match by name, so never derive them from names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError

_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def _hand(side: str) -> list[str]:
    names = []
    for finger in _FINGERS:
        names += [f"{side}_{finger}4", f"{side}_{finger}3", f"{side}_{finger}2", f"{side}_{finger}_third_joint"]
    return names + [f"{side}_wrist"]


def _eyebrow(s: str) -> list[str]:
    parts = ("upper_startpoint", "lower_startpoint", "end", "upper_midpoint_1", "lower_midpoint_1",
             "upper_midpoint_2", "upper_midpoint_3", "lower_midpoint_2", "lower_midpoint_3")
    return [f"{p}_of_{s}_eyebrow" for p in parts]


def _eye(s: str, lid: str, lash_mids: tuple, lid_order: tuple, crease: bool) -> list[str]:
    """One eye, upper or lower: lash line (9), eyelid line (8), then crease line (7, upper only)."""
    def line(order: tuple, kind: str) -> list[str]:
        return [f"{s}_{'centerpoint' if m == 'c' else f'midpoint_{m}'}_of_{lid}_{kind}_line" for m in order]

    names = [f"{s}_inner_end_of_{lid}_lash_line", f"{s}_outer_end_of_{lid}_lash_line",
             f"{s}_centerpoint_of_{lid}_lash_line"]
    names += [f"{s}_midpoint_{m}_of_{lid}_lash_line" for m in lash_mids]
    names += [f"{s}_outer_end_of_{lid}_eyelid_line"] + line(lid_order, "eyelid")
    if crease:
        names += line(lid_order, "crease")
    return names


_L_LASH, _L_LID = (2, 1, 6, 5, 4, 3), (6, 2, 5, "c", 4, 1, 3)
_R_LASH, _R_LID = (1, 2, 3, 4, 5, 6), (3, 1, 4, "c", 5, 2, 6)

_NOSE = ["tip_of_nose", "bottom_center_of_nose", "r_outer_corner_of_nose", "l_outer_corner_of_nose",
         "inner_corner_of_r_nostril", "outer_corner_of_r_nostril", "upper_corner_of_r_nostril",
         "inner_corner_of_l_nostril", "outer_corner_of_l_nostril", "upper_corner_of_l_nostril"]


def _lips(layer: str) -> list[str]:
    return ([f"r_{layer}_corner_of_mouth", f"l_{layer}_corner_of_mouth"]
            + (["center_of_cupid_bow", "center_of_lower_outer_lip"] if layer == "outer"
               else ["center_of_upper_inner_lip", "center_of_lower_inner_lip"])
            + [f"midpoint_{i}_of_{lip}_{layer}_lip" for i, lip in
               ((1, "upper"), (2, "upper"), (1, "lower"), (2, "lower"))]
            + [f"midpoint_{i}_of_upper_{layer}_lip" for i in (3, 4, 5, 6)]
            + [f"midpoint_{i}_of_lower_{layer}_lip" for i in (3, 4, 5, 6)])


def _ear(s: str, helix: tuple) -> list[str]:
    """``helix``: the inner-helix point numbers at positions 8-14 and 25 of the ear list."""
    p = [f"{s}_point_{i}_of_inner_helix" for i in helix]
    return ([f"{s}_top_end_of_inferior_crus", f"{s}_top_end_of_superior_crus", f"{s}_start_of_antihelix",
             f"{s}_end_of_antihelix", f"{s}_midpoint_1_of_antihelix", f"{s}_midpoint_1_of_inferior_crus",
             f"{s}_midpoint_2_of_antihelix", f"{s}_midpoint_3_of_antihelix"]
            + p[:7]
            + [f"{s}_highest_point_of_antitragus", f"{s}_bottom_point_of_tragus",
               f"{s}_protruding_point_of_tragus", f"{s}_top_point_of_tragus",
               f"{s}_start_point_of_crus_of_helix", f"{s}_deepest_point_of_concha",
               f"{s}_tip_of_ear_lobe", f"{s}_midpoint_between_22_15",
               f"{s}_bottom_connecting_point_of_ear_lobe", f"{s}_top_connecting_point_of_helix"]
            + p[7:])


def _iris(s: str, part: str) -> list[str]:
    return [f"{s}_center_of_{part}", f"{s}_border_of_{part}_3", f"{s}_border_of_{part}_midpoint_1",
            f"{s}_border_of_{part}_12", f"{s}_border_of_{part}_midpoint_4", f"{s}_border_of_{part}_9",
            f"{s}_border_of_{part}_midpoint_3", f"{s}_border_of_{part}_6", f"{s}_border_of_{part}_midpoint_2"]


KEYPOINT_NAMES: tuple[str, ...] = tuple(
    ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
     "left_elbow", "right_elbow", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
     "right_ankle"]
    + ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
    + _hand("right") + _hand("left")
    + ["left_olecranon", "right_olecranon", "left_cubital_fossa", "right_cubital_fossa",
       "left_acromion", "right_acromion", "neck"]
    + ["center_of_glabella", "center_of_nose_root", "tip_of_nose_bridge", "midpoint_1_of_nose_bridge",
       "midpoint_2_of_nose_bridge", "midpoint_3_of_nose_bridge", "center_of_labiomental_groove",
       "tip_of_chin"]
    + _eyebrow("r") + _eyebrow("l")
    + _eye("l", "upper", _L_LASH, _L_LID, True) + _eye("r", "upper", _R_LASH, _R_LID, True)
    + _eye("l", "lower", _L_LASH, _L_LID, False) + _eye("r", "lower", _R_LASH, _R_LID, False)
    + _NOSE + _lips("outer") + _lips("inner")
    + _ear("l", (1, 2, 3, 4, 5, 6, 7, 8)) + _ear("r", (1, 8, 3, 4, 5, 6, 7, 2))
    + _iris("l", "iris") + _iris("r", "iris") + _iris("l", "pupil") + _iris("r", "pupil")
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)
KEYPOINT_INDEX: dict[str, int] = {n: i for i, n in enumerate(KEYPOINT_NAMES)}

KEYPOINT_GROUPS: dict[str, range] = {
    "body": range(0, 15),
    "feet": range(15, 21),
    "right_hand": range(21, 42),
    "left_hand": range(42, 63),
    "extra": range(63, 70),
    "face": range(70, 308),
}
"""Top-level groups (0-based, end-exclusive). The wrists belong to the hands."""

FACE_REGIONS: dict[str, range] = {
    "center": range(70, 78),
    "right_eyebrow": range(78, 87),
    "left_eyebrow": range(87, 96),
    "left_eye_upper": range(96, 120),
    "right_eye_upper": range(120, 144),
    "left_eye_lower": range(144, 161),
    "right_eye_lower": range(161, 178),
    "nose": range(178, 188),
    "mouth": range(188, 220),
    "left_ear": range(220, 246),
    "right_ear": range(246, 272),
    "left_iris": range(272, 281),
    "right_iris": range(281, 290),
    "left_pupil": range(290, 299),
    "right_pupil": range(299, 308),
}

# Appendix A, verbatim: position i holds the index whose heatmap takes its place after a flip.
FLIP_INDICES: tuple[int, ...] = tuple(int(t) for t in """
0 2 1 4 3 6 5 8 7 10 9 12 11 14 13 18 19 20 15 16 17 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60
61 62 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 64 63 66 65 68 67 69 70 71 72 73 74 75 76
77 87 88 89 90 91 93 92 95 94 78 79 80 81 82 84 83 86 85 120 121 122 123 124 125 126 127 128 129 130 131 132
133 134 135 136 137 138 139 140 141 142 143 96 97 98 99 100 101 102 103 104 105 106 107 108 109 110 111 112
113 114 115 116 117 118 119 161 162 163 164 165 166 167 168 169 170 171 172 173 174 175 176 177 144 145 146
147 148 149 150 151 152 153 154 155 156 157 158 159 160 178 179 181 180 185 186 187 182 183 184 189 188 190
191 193 192 195 194 199 198 197 196 203 202 201 200 205 204 206 207 209 208 211 210 215 214 213 212 219 218
217 216 246 247 248 249 250 251 252 253 254 255 256 257 258 259 260 261 262 263 264 265 266 267 268 269 270
271 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245
281 286 285 284 283 282 289 288 287 272 277 276 275 274 273 280 279 278 299 304 303 302 301 300 307 306 305
290 295 294 293 292 291 298 297 296
""".split())


def _hand_links(wrist: int, first: int) -> list[tuple[int, int]]:
    links = []
    for f in range(5):  # per finger: tip(4), 3, 2, third_joint -> chain from the wrist outwards
        tip, d3, d2, joint = first + 4 * f, first + 4 * f + 1, first + 4 * f + 2, first + 4 * f + 3
        links += [(wrist, joint), (joint, d2), (d2, d3), (d3, tip)]
    return links


SKELETON: tuple[tuple[int, int], ...] = tuple(
    # head and torso
    [(0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 9), (6, 10), (9, 10), (69, 5), (69, 6)]
    # arms (elbow -> wrist, the wrists are 62 left / 41 right) and legs
    + [(5, 7), (7, 62), (6, 8), (8, 41), (9, 11), (11, 13), (10, 12), (12, 14)]
    # feet: ankle -> big toe, small toe, heel
    + [(13, 15), (13, 16), (13, 17), (14, 18), (14, 19), (14, 20)]
    + _hand_links(41, 21) + _hand_links(62, 42)
    # face: nose bridge, nostrils, chin, eyebrows, eye outlines, lips (points whose order is
    # unambiguous from their names only)
    + [(70, 71), (71, 72), (72, 178), (178, 179), (179, 180), (179, 181), (191, 76), (76, 77)]
    + [(78, 79), (78, 80), (79, 80), (87, 88), (87, 89), (88, 89)]
    + [(96, 98), (98, 97), (144, 146), (146, 145), (120, 122), (122, 121), (161, 163), (163, 162)]
    + [(188, 190), (190, 189), (189, 191), (191, 188), (204, 206), (206, 205), (205, 207), (207, 204)]
)
"""Links drawn between keypoints: our own design (the reference's 65-link skeleton is not in
the spec). It is symmetric under :data:`FLIP_INDICES`."""

COCO17_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
COCO17_FROM_308: tuple[int, ...] = tuple(KEYPOINT_INDEX[n] for n in COCO17_NAMES)
"""Index into the 308 set for each COCO-17 keypoint (wrists: 62 left, 41 right)."""

COCO17_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)


def keypoint_subset(keypoints: Any) -> tuple[int, ...] | None:
    """Which of the 308 keypoints to decode: None (all), ``"coco17"`` (:data:`COCO17_FROM_308`, in
    COCO order) or a sequence of keypoint names or indices; as indices into the 308 set."""
    if keypoints is None:
        return None
    if isinstance(keypoints, str):
        if keypoints.lower() == "coco17":
            return COCO17_FROM_308
        keypoints = [keypoints]
    out = []
    for k in keypoints:
        if isinstance(k, str) and k in KEYPOINT_INDEX:
            out.append(KEYPOINT_INDEX[k])
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < NUM_KEYPOINTS:
            out.append(int(k))
        else:
            raise ConfigError(f"keypoints: {k!r} is neither one of the {NUM_KEYPOINTS} keypoint names (see "
                              f"sapiens2_edge.tasks.keypoints.KEYPOINT_NAMES) nor an index in 0..{NUM_KEYPOINTS - 1}; "
                              "expected None, 'coco17' or a list of names or indices")
    if not out:
        raise ConfigError("keypoints: an empty list decodes nothing; pass None for all 308, 'coco17' or some names")
    return tuple(out)


def to_coco17(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Select the COCO-17 subset: (..., 308, 2), (..., 308) -> (..., 17, 2), (..., 17)."""
    idx = np.asarray(COCO17_FROM_308)
    return np.asarray(keypoints)[..., idx, :], np.asarray(scores)[..., idx]


def keypoint_group(index: int) -> str:
    """Name of the top-level group that keypoint ``index`` belongs to."""
    for name, r in KEYPOINT_GROUPS.items():
        if index in r:
            return name
    raise IndexError(f"keypoint index {index} is outside 0..{NUM_KEYPOINTS - 1}")


# -- COCO-WholeBody (133 keypoints) ---------------------------------------------------------------
# The spec gives no 133 mapping; this one is derived from the names (Appendix A) and documented per
# group. Order: body 17, feet 6, face 68, left hand 21, right hand 21 (the COCO-WholeBody order).
def _wb_hand(side: str) -> list[int | None]:
    """COCO-WholeBody hand: root, then per finger 1 (base) .. 4 (tip). The 308 set names each
    finger's points ``<finger>4`` (tip), ``3``, ``2`` and ``_third_joint`` (the base joint, third
    from the tip); the numbered ones keep their number and ``_third_joint`` is COCO's 1."""
    out: list[int | None] = [KEYPOINT_INDEX[f"{side}_wrist"]]
    for finger in _FINGERS:
        out += [KEYPOINT_INDEX[f"{side}_{finger}_third_joint"]] + [KEYPOINT_INDEX[f"{side}_{finger}{i}"] for i in (2, 3, 4)]
    return out


# Face: the 68 iBUG/300-W landmarks COCO-WholeBody uses (0-16 jaw, 17-21 and 22-26 eyebrows,
# 27-30 nose bridge, 31-35 nose bottom, 36-41 and 42-47 eyes, 48-59 outer and 60-67 inner lips;
# "right" is the person's right, on the image's left). Only landmarks with a same-meaning 308 point
# are mapped: the jaw has only the chin, the 308 eyebrow and eyelid midpoints are not ordered along
# the curve by name, and neither are the nose-bridge midpoints; the rest have no counterpart.
_FACE68_FROM_NAME: dict[int, str] = {
    8: "tip_of_chin",
    27: "center_of_nose_root", 30: "tip_of_nose",
    31: "r_outer_corner_of_nose", 33: "bottom_center_of_nose", 35: "l_outer_corner_of_nose",
    36: "r_outer_end_of_upper_lash_line", 39: "r_inner_end_of_upper_lash_line",
    42: "l_inner_end_of_upper_lash_line", 45: "l_outer_end_of_upper_lash_line",
    48: "r_outer_corner_of_mouth", 51: "center_of_cupid_bow", 54: "l_outer_corner_of_mouth",
    57: "center_of_lower_outer_lip",
    60: "r_inner_corner_of_mouth", 62: "center_of_upper_inner_lip", 64: "l_inner_corner_of_mouth",
    66: "center_of_lower_inner_lip",
}

WHOLEBODY_PARTS: dict[str, range] = {
    "body": range(0, 17), "foot": range(17, 23), "face": range(23, 91),
    "lefthand": range(91, 112), "righthand": range(112, 133),
}
"""The parts of the 133 set, as COCO-WholeBody results files split them (``<part>_kpts``; the
body goes in ``keypoints``)."""

WHOLEBODY133_FROM_308: tuple[int | None, ...] = tuple(
    list(COCO17_FROM_308)
    + [KEYPOINT_INDEX[n] for n in ("left_big_toe", "left_small_toe", "left_heel",
                                   "right_big_toe", "right_small_toe", "right_heel")]
    + [KEYPOINT_INDEX[_FACE68_FROM_NAME[i]] if i in _FACE68_FROM_NAME else None for i in range(68)]
    + _wb_hand("left") + _wb_hand("right")
)
"""Index into the 308 set for each COCO-WholeBody keypoint, None where the 308 set has no
counterpart (50 of the 68 face landmarks)."""

COCO_FORMATS = {"coco17": COCO17_FROM_308, "wholebody133": WHOLEBODY133_FROM_308}


def to_keypoint_set(keypoints: np.ndarray, scores: np.ndarray, mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 308, 2), (..., 308) -> keypoints (..., M, 2), scores (..., M) and a (M,) bool mask of the
    mapped ones; unmapped keypoints (None in ``mapping``) get coordinates 0 and score 0."""
    mapped = np.array([i is not None for i in mapping])
    idx = np.array([i if i is not None else 0 for i in mapping])
    kps = np.where(mapped[:, None], np.asarray(keypoints)[..., idx, :], 0.0).astype(np.float32)
    sc = np.where(mapped, np.asarray(scores)[..., idx], 0.0).astype(np.float32)
    return kps, sc, mapped
