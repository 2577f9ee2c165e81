"""The real-time node (ROS 2 messages, transport, sensor sync, streaming state). Not built yet."""
