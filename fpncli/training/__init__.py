"""Training services: fpn train's run setup, the training loop and its configuration."""
