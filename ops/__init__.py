"""Custom operators: voxelization, sparse 3-D convolution, point<->voxel transforms, BEV pooling, BEV NMS.

Each op has a plain-PyTorch reference (the test oracle) and, where it pays, a faster path chosen
at call time.
"""
