"""What can be wrong with an input image: each error names the request field and the limit it broke."""

from __future__ import annotations

from skulens.errors import SkulensError


class ImageError(SkulensError):
    """Base of the errors of one input image (or region); other images of the request are unaffected."""


class InvalidImage(ImageError):
    """The bytes are not a decodable image of a supported format (unknown, corrupt, truncated, empty)."""


class InvalidRegion(InvalidImage):
    """A region (box) is malformed or lies outside its image."""


class ImageTooLarge(ImageError):
    """The encoded size or the pixel count is over its limit."""


class ImageTooSmall(ImageError):
    """The image (or region) is under the minimum side."""
