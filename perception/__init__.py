"""Camera + LiDAR bird's-eye-view perception.

One import root: ``perception``. The top-level folders ``ops/`` and ``deploy/`` install as
``perception.ops`` and ``perception.deploy``.
"""

__version__ = "0.1.0"
