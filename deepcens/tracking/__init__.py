"""Linking per-frame instances over time into Cell Tracking Challenge tracks.

``build_tracker(cfg)`` gives the tracker named by ``TRACKING.NAME``; ``tracker.track(frames)``
takes label images (one per frame, any ids) and returns a :class:`TrackingResult`: the frames
relabelled with persistent track ids and the ``L B E P`` track table.
"""
from deepcens.tracking.base import (  # noqa: F401
    TRACKER_REGISTRY, FrameObjects, TrackingResult, build_tracker, frame_objects, links_to_tracks,
)
from deepcens.tracking import trackers  # noqa: F401  (registrations)
from deepcens.tracking.io import write_track_csv, write_track_table  # noqa: F401

__all__ = ["TRACKER_REGISTRY", "FrameObjects", "TrackingResult", "build_tracker", "frame_objects", "links_to_tracks",
           "write_track_csv", "write_track_table"]
