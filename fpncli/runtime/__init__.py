"""Process runtime shared by the services: torchrun process groups, errors across ranks, progress events."""
