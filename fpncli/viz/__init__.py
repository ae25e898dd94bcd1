"""Figures: precision-recall curves, pyramid-level views. matplotlib is imported inside the functions."""
