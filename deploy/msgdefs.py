"""ROS 2 message definitions that rosbags' Humble typestore lacks, as `.msg` text.

Written from the packages' own definitions (field names, types and order decide the CDR wire
layout; comments and constants do not):

- `vision_msgs` 4.x (ROS 2 Humble and later, `ros2` branch of ros-perception/vision_msgs).
- `autoware_perception_msgs` (autowarefoundation/autoware_msgs, the message set Autoware's
  perception stack publishes and consumes since 2024; it replaced
  `autoware_auto_perception_msgs`, whose `DetectedObjects` has the same layout).

Dependencies that rosbags already holds (std_msgs, geometry_msgs, sensor_msgs, ...) are not
repeated here.
"""

from __future__ import annotations

VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/ObjectHypothesis": """\
# An object hypothesis that contains no pose information.
string class_id
float64 score
""",
    "vision_msgs/msg/ObjectHypothesisWithPose": """\
# An object hypothesis that contains pose information.
vision_msgs/ObjectHypothesis hypothesis
geometry_msgs/PoseWithCovariance pose
""",
    "vision_msgs/msg/BoundingBox3D": """\
# A 3D bounding box that can be positioned and rotated about its center (6 DOF).
# The 3D position and orientation of the bounding box center
geometry_msgs/Pose center
# The total size of the bounding box, in meters, surrounding the object's center pose.
geometry_msgs/Vector3 size
""",
    "vision_msgs/msg/Detection3D": """\
# Defines a 3D detection result.
std_msgs/Header header
# Class probabilities. Does not have to include hypotheses for all possible object ids.
vision_msgs/ObjectHypothesisWithPose[] results
# 3D bounding box surrounding the object.
vision_msgs/BoundingBox3D bbox
# ID used for consistency across multiple detection messages.
string id
""",
    "vision_msgs/msg/Detection3DArray": """\
std_msgs/Header header
vision_msgs/Detection3D[] detections
""",
}

AUTOWARE_PERCEPTION_MSGS: dict[str, str] = {
    "autoware_perception_msgs/msg/ObjectClassification": """\
uint8 UNKNOWN = 0
uint8 CAR = 1
uint8 TRUCK = 2
uint8 BUS = 3
uint8 TRAILER = 4
uint8 MOTORCYCLE = 5
uint8 BICYCLE = 6
uint8 PEDESTRIAN = 7
uint8 ANIMAL = 8
uint8 HAZARD = 9
uint8 OVER_DRIVABLE = 10
uint8 UNDER_DRIVABLE = 11

uint8 label
float32 probability
""",
    "autoware_perception_msgs/msg/Shape": """\
uint8 BOUNDING_BOX=0
uint8 CYLINDER=1
uint8 POLYGON=2

uint8 type
geometry_msgs/Polygon footprint
geometry_msgs/Vector3 dimensions
""",
    "autoware_perception_msgs/msg/DetectedObjectKinematics": """\
# Only position is available, orientation is empty.
uint8 UNAVAILABLE=0
# The orientation is determined only up to a sign flip.
uint8 SIGN_UNKNOWN=1
# The full orientation is available.
uint8 AVAILABLE=2

geometry_msgs/PoseWithCovariance pose_with_covariance

bool has_position_covariance
uint8 orientation_availability

geometry_msgs/TwistWithCovariance twist_with_covariance

bool has_twist
bool has_twist_covariance
""",
    "autoware_perception_msgs/msg/DetectedObject": """\
float32 existence_probability
autoware_perception_msgs/ObjectClassification[] classification
autoware_perception_msgs/DetectedObjectKinematics kinematics
autoware_perception_msgs/Shape shape
""",
    "autoware_perception_msgs/msg/DetectedObjects": """\
std_msgs/Header header
autoware_perception_msgs/DetectedObject[] objects
""",
}

ALL_MSGDEFS: dict[str, str] = {**VISION_MSGS, **AUTOWARE_PERCEPTION_MSGS}
