"""The real-time node's transport and message half (the node itself builds on it).

- `messages`: the ROS 2 typestore (rosbags, Humble + vision_msgs + autoware_perception_msgs),
  CDR (de)serialization, ROS <-> DDS names.
- `convert`: numpy/`Detections` <-> PointCloud2, CompressedImage, Image, CameraInfo,
  TFMessage, Detection3DArray, DetectedObjects, MarkerArray; decoders validate.
- `validation`: `InvalidMessage` (topic, field, reason) and the per-topic `StampTracker`.
- `transport`: `DdsTransport` (Cyclone DDS, ROS 2 naming, loopback by default) and
  `InProcessTransport`, one publish/subscribe API over CDR bytes.
- `bag`: nuScenes scene -> rosbag2, and real-time replay of a bag onto a transport.

Submodules import their heavy dependencies (rosbags, cyclonedds) themselves; importing this
package costs nothing.
"""
