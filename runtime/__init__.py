"""The daemon's runtime: configuration, wiring of instances, the sync cycle, logging and the demo."""
