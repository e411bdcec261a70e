"""The 308-keypoint metadata against spec Appendix A, and the 29 seg classes against 2.2."""

import numpy as np
import pytest

from sapiens2_edge.tasks import (
    COCO17_FROM_308,
    COCO17_NAMES,
    FLIP_INDICES,
    KEYPOINT_GROUPS,
    KEYPOINT_NAMES,
    SEG_CLASSES,
    SEG_FLIP_PAIRS,
    SEG_PALETTE,
    SKELETON,
    to_coco17,
)
from sapiens2_edge.tasks.keypoints import FACE_REGIONS, KEYPOINT_INDEX

# index -> name, read off Appendix A by hand
SPOT = {
    0: "nose", 3: "left_ear", 8: "right_elbow", 13: "left_ankle", 14: "right_ankle",
    15: "left_big_toe", 17: "left_heel", 18: "right_big_toe", 20: "right_heel",
    21: "right_thumb4", 22: "right_thumb3", 23: "right_thumb2", 24: "right_thumb_third_joint",
    25: "right_forefinger4", 29: "right_middle_finger4", 33: "right_ring_finger4", 37: "right_pinky_finger4",
    40: "right_pinky_finger_third_joint", 41: "right_wrist", 42: "left_thumb4",
    61: "left_pinky_finger_third_joint", 62: "left_wrist",
    63: "left_olecranon", 66: "right_cubital_fossa", 67: "left_acromion", 69: "neck",
    70: "center_of_glabella", 71: "center_of_nose_root", 72: "tip_of_nose_bridge", 73: "midpoint_1_of_nose_bridge",
    75: "midpoint_3_of_nose_bridge", 76: "center_of_labiomental_groove", 77: "tip_of_chin",
    78: "upper_startpoint_of_r_eyebrow", 80: "end_of_r_eyebrow", 83: "upper_midpoint_2_of_r_eyebrow",
    86: "lower_midpoint_3_of_r_eyebrow", 87: "upper_startpoint_of_l_eyebrow", 95: "lower_midpoint_3_of_l_eyebrow",
    96: "l_inner_end_of_upper_lash_line", 97: "l_outer_end_of_upper_lash_line", 98: "l_centerpoint_of_upper_lash_line",
    99: "l_midpoint_2_of_upper_lash_line", 100: "l_midpoint_1_of_upper_lash_line", 104: "l_midpoint_3_of_upper_lash_line",
    105: "l_outer_end_of_upper_eyelid_line", 106: "l_midpoint_6_of_upper_eyelid_line",
    109: "l_centerpoint_of_upper_eyelid_line", 112: "l_midpoint_3_of_upper_eyelid_line",
    113: "l_midpoint_6_of_upper_crease_line", 116: "l_centerpoint_of_upper_crease_line",
    119: "l_midpoint_3_of_upper_crease_line",
    120: "r_inner_end_of_upper_lash_line", 123: "r_midpoint_1_of_upper_lash_line", 128: "r_midpoint_6_of_upper_lash_line",
    129: "r_outer_end_of_upper_eyelid_line", 130: "r_midpoint_3_of_upper_eyelid_line",
    133: "r_centerpoint_of_upper_eyelid_line", 136: "r_midpoint_6_of_upper_eyelid_line",
    137: "r_midpoint_3_of_upper_crease_line", 143: "r_midpoint_6_of_upper_crease_line",
    144: "l_inner_end_of_lower_lash_line", 147: "l_midpoint_2_of_lower_lash_line",
    153: "l_outer_end_of_lower_eyelid_line", 157: "l_centerpoint_of_lower_eyelid_line",
    160: "l_midpoint_3_of_lower_eyelid_line", 161: "r_inner_end_of_lower_lash_line",
    164: "r_midpoint_1_of_lower_lash_line", 170: "r_outer_end_of_lower_eyelid_line",
    177: "r_midpoint_6_of_lower_eyelid_line",
    178: "tip_of_nose", 179: "bottom_center_of_nose", 180: "r_outer_corner_of_nose", 182: "inner_corner_of_r_nostril",
    187: "upper_corner_of_l_nostril",
    188: "r_outer_corner_of_mouth", 189: "l_outer_corner_of_mouth", 190: "center_of_cupid_bow",
    191: "center_of_lower_outer_lip", 192: "midpoint_1_of_upper_outer_lip", 195: "midpoint_2_of_lower_outer_lip",
    196: "midpoint_3_of_upper_outer_lip", 199: "midpoint_6_of_upper_outer_lip", 203: "midpoint_6_of_lower_outer_lip",
    204: "r_inner_corner_of_mouth", 206: "center_of_upper_inner_lip", 207: "center_of_lower_inner_lip",
    208: "midpoint_1_of_upper_inner_lip", 219: "midpoint_6_of_lower_inner_lip",
    220: "l_top_end_of_inferior_crus", 223: "l_end_of_antihelix", 227: "l_midpoint_3_of_antihelix",
    228: "l_point_1_of_inner_helix", 234: "l_point_7_of_inner_helix", 235: "l_highest_point_of_antitragus",
    241: "l_tip_of_ear_lobe", 242: "l_midpoint_between_22_15", 244: "l_top_connecting_point_of_helix",
    245: "l_point_8_of_inner_helix",
    246: "r_top_end_of_inferior_crus", 254: "r_point_1_of_inner_helix", 255: "r_point_8_of_inner_helix",
    256: "r_point_3_of_inner_helix", 260: "r_point_7_of_inner_helix", 261: "r_highest_point_of_antitragus",
    271: "r_point_2_of_inner_helix",
    272: "l_center_of_iris", 273: "l_border_of_iris_3", 274: "l_border_of_iris_midpoint_1",
    275: "l_border_of_iris_12", 277: "l_border_of_iris_9", 279: "l_border_of_iris_6",
    280: "l_border_of_iris_midpoint_2", 281: "r_center_of_iris", 289: "r_border_of_iris_midpoint_2",
    290: "l_center_of_pupil", 291: "l_border_of_pupil_3", 299: "r_center_of_pupil", 307: "r_border_of_pupil_midpoint_2",
}

SELF_MAPPED = [0, *range(69, 78), 178, 179, 190, 191, 206, 207]


def test_names_count_unique():
    assert len(KEYPOINT_NAMES) == 308 and len(set(KEYPOINT_NAMES)) == 308


@pytest.mark.parametrize("index,name", sorted(SPOT.items()))
def test_spot_names(index, name):
    assert KEYPOINT_NAMES[index] == name


def test_groups_partition_the_set():
    covered = sorted(i for r in KEYPOINT_GROUPS.values() for i in r)
    assert covered == list(range(308))
    assert len(KEYPOINT_GROUPS["face"]) == 238
    face = sorted(i for r in FACE_REGIONS.values() for i in r)
    assert face == list(range(70, 308))


def test_flip_table_is_an_involution_with_16_fixed_points():
    f = np.asarray(FLIP_INDICES)
    assert f.shape == (308,) and sorted(f) == list(range(308))
    np.testing.assert_array_equal(f[f], np.arange(308))
    assert [i for i in range(308) if f[i] == i] == SELF_MAPPED


def test_flip_pairs_named_in_the_appendix():
    f, idx = FLIP_INDICES, KEYPOINT_INDEX
    pairs = [
        ("l_midpoint_2_of_upper_lash_line", "r_midpoint_1_of_upper_lash_line"),
        ("l_point_2_of_inner_helix", "r_point_8_of_inner_helix"),
        ("upper_midpoint_2_of_r_eyebrow", "upper_midpoint_3_of_l_eyebrow"),
        ("l_border_of_iris_3", "r_border_of_iris_9"),
    ]
    for a, b in pairs:
        assert f[idx[a]] == idx[b] and f[idx[b]] == idx[a]


def test_body_hand_foot_flips_swap_sides_by_name():
    for i in range(69):
        name = KEYPOINT_NAMES[i]
        if name.startswith("left_"):
            assert KEYPOINT_NAMES[FLIP_INDICES[i]] == "right_" + name[5:]
        elif name.startswith("right_"):
            assert KEYPOINT_NAMES[FLIP_INDICES[i]] == "left_" + name[6:]


def test_self_mapped_points_have_no_side():
    for i in SELF_MAPPED:
        n = KEYPOINT_NAMES[i]
        assert not any(t in n.split("_") for t in ("l", "r", "left", "right")), n


def test_skeleton_is_valid_and_mirror_symmetric():
    links = {tuple(sorted(p)) for p in SKELETON}
    assert len(links) == len(SKELETON)  # no duplicates
    assert all(a != b and 0 <= a < 308 and 0 <= b < 308 for a, b in SKELETON)
    mirrored = {tuple(sorted((FLIP_INDICES[a], FLIP_INDICES[b]))) for a, b in links}
    assert mirrored == links
    # every body, foot and hand point is connected to something
    linked = {i for p in SKELETON for i in p}
    assert set(range(63)) <= linked


def test_coco17_mapping():
    assert COCO17_NAMES[9:11] == ("left_wrist", "right_wrist")
    assert list(COCO17_FROM_308) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 62, 41, 9, 10, 11, 12, 13, 14]
    for name, i in zip(COCO17_NAMES, COCO17_FROM_308, strict=True):
        assert KEYPOINT_NAMES[i] == name
    kps = np.arange(2 * 308 * 2, dtype=np.float32).reshape(2, 308, 2)
    sc = np.arange(2 * 308, dtype=np.float32).reshape(2, 308)
    k17, s17 = to_coco17(kps, sc)
    assert k17.shape == (2, 17, 2) and s17.shape == (2, 17)
    np.testing.assert_array_equal(k17[1, 9], kps[1, 62])
    np.testing.assert_array_equal(s17[0, 10], sc[0, 41])


def test_seg_classes_and_palette():
    assert len(SEG_CLASSES) == 29 and SEG_PALETTE.shape == (29, 3) and SEG_PALETTE.dtype == np.uint8
    assert SEG_CLASSES[0] == "Background" and SEG_CLASSES[22] == "Torso" and SEG_CLASSES[28] == "Tongue"
    assert tuple(SEG_PALETTE[0]) == (50, 50, 50)
    assert tuple(SEG_PALETTE[15]) == (255, 0, 0)
    assert tuple(SEG_PALETTE[23]) == (0, 128, 72)
    assert tuple(SEG_PALETTE[28]) == (82, 21, 114)
    for a, b in SEG_FLIP_PAIRS:
        assert SEG_CLASSES[a].startswith("Left_") and SEG_CLASSES[b] == "Right_" + SEG_CLASSES[a][5:]
