"""Augmented views of a reference image: the mirror image and corner/centre crops (and their mirrors).

Catalog-adapted matching adds the embeddings of these views to the statistics of products that have few
references (a single packshot, say), so that their centroid stands for the product as shop photos show it —
off-centre, partly cut off, mirrored — rather than for one studio picture.
"""

from __future__ import annotations

from PIL import Image

#: Crop sizes, as fractions of each side; five crops per size (four corners and the centre).
CROP_FRACTIONS = (0.8, 0.65)


def augmented_views(img: Image.Image, fractions: tuple[float, ...] = CROP_FRACTIONS) -> list[Image.Image]:
    """The mirror image, then for each fraction the four corner crops and the centre crop, each followed by its
    mirror: 1 + 10 × len(fractions) views (21 by default). The image itself is not among them."""
    views = [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    w, h = img.size
    for f in fractions:
        cw, ch = max(1, round(w * f)), max(1, round(h * f))
        for x, y in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch), ((w - cw) // 2, (h - ch) // 2)):
            crop = img.crop((x, y, x + cw, y + ch))
            views += [crop, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return views
