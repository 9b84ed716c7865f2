"""Tracking transfer (paper Table 4, UniTrack's protocol): one appearance model from the frozen backbone and task
heads without fine-tuning.

- `appearance`: the backbone up to stage 3 at stride 8, L2-normalised features.
- `vos`, `sot`, `mot`: mask propagation by feature affinity, cross-correlation tracking, association of given
  detections by appearance (Hungarian, motion cues off).
- `metrics`: DAVIS J / F, the OTB success AUC, MOTChallenge HOTA / MOTA / IDF1 (TrackEval).
- `videos`, `datasets`: the offline digit videos in DAVIS, OTB and MOTChallenge layouts, and checked readers.

The protocol entry point and its place in the DAG are issue 12's next step.
"""
