"""The FPN Faster R-CNN: bottom-up backbone, necks, level assignment, detector, weights.

Nothing is imported here, so that torch-free parts (the neck registry) stay importable
without torch.
"""
