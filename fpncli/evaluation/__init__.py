"""Evaluation services: the COCOeval driver and fpn eval."""
