"""Pictures of samples and detections (camera views with projected boxes, BEV views)."""

from .sample import draw_bev, draw_cameras, draw_sample

__all__ = ["draw_bev", "draw_cameras", "draw_sample"]
