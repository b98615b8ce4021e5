"""Images in: reading, the one preprocessing spec, datasets, calibration inputs."""
