"""Data: robust image reading, COCO annotation files, datasets and synthetic data."""
