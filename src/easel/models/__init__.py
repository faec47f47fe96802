"""Finding models: references -> sources, family detection, and the pipeline cache."""
