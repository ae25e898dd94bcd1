"""`fpn detect --track`: one id per object across the frames of a video or stream.

- :mod:`.adapter`: the multi-object trackers (roboflow's ``trackers`` package, the optional
  extra ``track``) behind one small interface, and the score thresholds they need.
- :mod:`.summary`: per-track statistics (class by majority vote, first/last frame, frames, mean score).
- :mod:`.counting`: ``--count-line``: tracks crossing a line, by direction and class.
- :mod:`.session`: one video's tracker, summary, paths and counter, as ``video_detect`` uses them.
"""
