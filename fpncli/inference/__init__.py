"""Inference services: the batched pipeline, sliced inference and TTA, fpn detect and its torchrun sharding."""
