"""Font faces bundled with matplotlib, and rendering single glyphs with FreeType.

Only faces whose character map is Unicode are used for every script; the Computer Modern
faces (``cmr10`` …) use TeX encodings, so they are used for ASCII letters and digits only,
where those encodings agree with Unicode. Faces that are not text (the LastResort
placeholder font, STIX size variants, the symbol-only cm faces) are left out.

A glyph is rendered with :class:`matplotlib.ft2font.FT2Font` into a square uint8 canvas,
centred on its ink bounding box. :meth:`Face.render` returns ``None`` for a glyph the face
cannot draw: no glyph for the code point, an empty bitmap, or a bitmap identical to the
face's ``.notdef`` glyph (the "tofu" box).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

ASCII_ALNUM = (
    frozenset(range(0x30, 0x3A)) | frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))
)

# (file name, restricted to ASCII letters and digits)
FACE_FILES: tuple[tuple[str, bool], ...] = (
    ("DejaVuSans.ttf", False),
    ("DejaVuSans-Bold.ttf", False),
    ("DejaVuSans-Oblique.ttf", False),
    ("DejaVuSans-BoldOblique.ttf", False),
    ("DejaVuSerif.ttf", False),
    ("DejaVuSerif-Bold.ttf", False),
    ("DejaVuSerif-Italic.ttf", False),
    ("DejaVuSerif-BoldItalic.ttf", False),
    ("DejaVuSansMono.ttf", False),
    ("DejaVuSansMono-Bold.ttf", False),
    ("DejaVuSansMono-Oblique.ttf", False),
    ("DejaVuSansMono-BoldOblique.ttf", False),
    ("STIXGeneral.ttf", False),
    ("STIXGeneralBol.ttf", False),
    ("STIXGeneralItalic.ttf", False),
    ("STIXGeneralBolIta.ttf", False),
    ("cmr10.ttf", True),
    ("cmss10.ttf", True),
    ("cmti10.ttf", True),
    ("cmtt10.ttf", True),
    ("cmb10.ttf", True),
)

EM_FRACTION = 0.8  # font size (em) as a fraction of the canvas side
MAX_EXTENT = 0.86  # glyphs larger than this fraction of the canvas are scaled down
MIN_INK_PIXELS = 12


def font_dir() -> Path:
    """Folder of the TrueType faces that ship with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@dataclass
class Face:
    """One font face able to render glyphs into square canvases of side ``canvas``."""

    path: Path
    ascii_only: bool
    canvas: int
    _font: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.stem

    @cached_property
    def charmap(self) -> frozenset[int]:
        """Code points the face maps to a glyph (restricted for TeX-encoded faces)."""
        points = frozenset(self.font.get_charmap())
        return points & ASCII_ALNUM if self.ascii_only else points

    @property
    def font(self):
        if self._font is None:
            from matplotlib.ft2font import FT2Font

            self._font = FT2Font(os.fspath(self.path))
        return self._font

    @cached_property
    def notdef(self) -> np.ndarray | None:
        """Rendering of the face's ``.notdef`` glyph (None when it is empty)."""
        return self._draw(glyph_index=0, size=self.canvas * EM_FRACTION)

    def render(self, codepoint: int) -> np.ndarray | None:
        """Centred uint8 ``[canvas, canvas]`` rendering, or None if the face cannot draw it."""
        if codepoint not in self.charmap or self.font.get_char_index(codepoint) == 0:
            return None
        size = self.canvas * EM_FRACTION
        crop = self._draw(codepoint=codepoint, size=size)
        if crop is not None and max(crop.shape) > MAX_EXTENT * self.canvas:
            crop = self._draw(
                codepoint=codepoint, size=size * MAX_EXTENT * self.canvas / max(crop.shape)
            )
        if crop is None or int((crop > 127).sum()) < MIN_INK_PIXELS:
            return None
        if self.notdef is not None and crop.shape == self.notdef.shape:
            if np.array_equal(crop, self.notdef):
                return None
        return _centre(crop, self.canvas)

    def _draw(
        self, size: float, codepoint: int | None = None, glyph_index: int | None = None
    ) -> np.ndarray | None:
        """Ink bounding-box crop of one glyph rendered at ``size`` pixels per em."""
        from matplotlib.ft2font import LoadFlags

        font = self.font
        font.set_size(size, 72)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if codepoint is not None:
                glyph = font.load_char(codepoint, LoadFlags.NO_HINTING)
            else:
                glyph = font.load_glyph(glyph_index, LoadFlags.NO_HINTING)
        side = 2 * self.canvas
        scratch = np.zeros((side, side), np.uint8)
        offset = self.canvas // 4
        font.draw_glyph_to_bitmap(scratch, offset, offset, glyph, antialiased=True)
        rows = np.flatnonzero(scratch.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(scratch.any(axis=0))
        return scratch[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _centre(crop: np.ndarray, canvas: int) -> np.ndarray:
    out = np.zeros((canvas, canvas), np.uint8)
    h, w = min(crop.shape[0], canvas), min(crop.shape[1], canvas)
    top, left = (canvas - h) // 2, (canvas - w) // 2
    out[top : top + h, left : left + w] = crop[:h, :w]
    return out


def bundled_faces(canvas: int) -> list[Face]:
    """The usable faces shipped with matplotlib (missing files are skipped)."""
    folder = font_dir()
    return [
        Face(folder / name, ascii_only, canvas)
        for name, ascii_only in FACE_FILES
        if (folder / name).is_file()
    ]
