"""Models: camera and LiDAR encoders, fusion, BEV decoder and detection heads."""
