// Constant tables shared with the Python package (sapiens2_edge/tasks/keypoints.py and seg.py).
#include <string>
#include <vector>

#include "s2e/tasks.hpp"

namespace s2e {
namespace tasks {

const std::vector<int>& flip_indices() {
    // Appendix A of the spec, verbatim: position i holds the index whose heatmap takes its place.
    static const std::vector<int> table = {
    0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 18, 19, 20, 15, 16, 17, 42, 43, 44,
    45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 21, 22, 23, 24, 25, 26,
    27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 64, 63, 66, 65, 68, 67, 69, 70, 71,
    72, 73, 74, 75, 76, 77, 87, 88, 89, 90, 91, 93, 92, 95, 94, 78, 79, 80, 81, 82, 84, 83, 86, 85,
    120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119,
    161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 173, 174, 175, 176, 177, 144, 145, 146, 147, 148, 149, 150,
    151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 178, 179, 181, 180, 185, 186, 187, 182, 183, 184, 189, 188, 190, 191,
    193, 192, 195, 194, 199, 198, 197, 196, 203, 202, 201, 200, 205, 204, 206, 207, 209, 208, 211, 210, 215, 214, 213, 212,
    219, 218, 217, 216, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265,
    266, 267, 268, 269, 270, 271, 220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237,
    238, 239, 240, 241, 242, 243, 244, 245, 281, 286, 285, 284, 283, 282, 289, 288, 287, 272, 277, 276, 275, 274, 273, 280,
    279, 278, 299, 304, 303, 302, 301, 300, 307, 306, 305, 290, 295, 294, 293, 292, 291, 298, 297, 296,
    };
    return table;
}

const std::vector<std::string>& seg_class_names() {
    static const std::vector<std::string> names = {
    "Background",
    "Apparel",
    "Eyeglass",
    "Face_Neck",
    "Hair",
    "Left_Foot",
    "Left_Hand",
    "Left_Lower_Arm",
    "Left_Lower_Leg",
    "Left_Shoe",
    "Left_Sock",
    "Left_Upper_Arm",
    "Left_Upper_Leg",
    "Lower_Clothing",
    "Right_Foot",
    "Right_Hand",
    "Right_Lower_Arm",
    "Right_Lower_Leg",
    "Right_Shoe",
    "Right_Sock",
    "Right_Upper_Arm",
    "Right_Upper_Leg",
    "Torso",
    "Upper_Clothing",
    "Lower_Lip",
    "Upper_Lip",
    "Lower_Teeth",
    "Upper_Teeth",
    "Tongue"
    };
    return names;
}

}  // namespace tasks
}  // namespace s2e
