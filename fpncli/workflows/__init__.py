"""Workflows that chain the services: fpn demo."""
