"""Figures: precision-recall curves, pyramid-level views, annotated detections (``draw``).
matplotlib is imported inside the functions."""
