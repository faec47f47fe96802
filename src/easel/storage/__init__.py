"""Images in and out: input images, grids, metadata (A1111 `parameters` + easel JSON), the gallery."""

from easel.storage.metadata import ImageMetadata, read_metadata

__all__ = ["ImageMetadata", "read_metadata"]
