"""Code shared by the coordinating center and the hospitals: models, data, privacy, metrics."""
