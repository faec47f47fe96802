"""Images in and out: reading init/control images, grids (metadata and gallery follow)."""
