"""Deployment: fpn export's service (graph export and its self-check)."""
