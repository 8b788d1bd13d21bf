"""Tracking: grounded targets followed between VLM calls with stable IDs (ROS-free).

flow: frame-to-frame box propagation (Lucas-Kanade with a depth gate); association: groundings to tracks;
colour: a lost target found again by its colours; tracker: the multi-target state machine the Track action runs.
"""

from vlm_ros.tracking.association import Association, AssociationSettings, Candidate, associate
from vlm_ros.tracking.flow import FlowSettings
from vlm_ros.tracking.tracker import TrackedTarget, Tracker, TrackerSettings, TrackState

__all__ = ["Association", "AssociationSettings", "Candidate", "associate", "FlowSettings", "TrackedTarget",
           "Tracker", "TrackerSettings", "TrackState"]
