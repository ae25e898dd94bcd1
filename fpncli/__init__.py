"""fpncli: a Feature Pyramid Network (FPN) Faster R-CNN detector and its command line."""

__version__ = "0.1.0"
