"""The alphabets of the embedded :class:`~metalab.datasets.glyphs.Glyphs` dataset.

Each alphabet is a script or a Unicode block (a few large blocks are cut into parts, as
Omniglot has several Canadian syllabaries). Only letters, numbers and symbols (Unicode
categories L*, N*, S*) are candidates; the split of every alphabet is fixed here so that
train, val and test alphabets are disjoint and the same for every seed, mixing scripts and
symbol sets in each split (about 60/15/25 percent of the alphabets, as in Omniglot).
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Alphabet:
    """A named set of code point ranges (inclusive) assigned to one split."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    split: str

    def codepoints(self) -> list[int]:
        """All code points of the alphabet's ranges, in order."""
        return [cp for lo, hi in self.ranges for cp in range(lo, hi + 1)]


def _a(name: str, split: str, *ranges: tuple[int, int]) -> Alphabet:
    return Alphabet(name, tuple(ranges), split)


ALPHABETS: tuple[Alphabet, ...] = (
    _a("Latin", "train", (0x41, 0x5A), (0x61, 0x7A)),
    _a("Greek", "train", (0x370, 0x3FF)),
    _a("Cyrillic", "train", (0x400, 0x4FF)),
    _a("Armenian", "train", (0x530, 0x58F)),
    _a("Hebrew", "train", (0x590, 0x5FF)),
    _a("Arabic", "train", (0x600, 0x6FF)),
    _a("Georgian_Mkhedruli", "train", (0x10D0, 0x10FF)),
    _a("Canadian_Syllabics_I", "train", (0x1400, 0x14FF)),
    _a("Canadian_Syllabics_II", "train", (0x1500, 0x167F)),
    _a("Ogham", "train", (0x1680, 0x169F)),
    _a("Braille", "train", (0x2800, 0x28FF)),
    _a("IPA_Extensions", "train", (0x250, 0x2AF)),
    _a("Latin_Extended_B", "train", (0x180, 0x24F)),
    _a("Lisu", "train", (0xA4D0, 0xA4FF)),
    _a("Mathematical_Operators", "train", (0x2200, 0x22FF)),
    _a("Arrows", "train", (0x2190, 0x21FF)),
    _a("Geometric_Shapes", "train", (0x25A0, 0x25FF)),
    _a("Miscellaneous_Symbols", "train", (0x2600, 0x26FF)),
    _a("Letterlike_Symbols", "train", (0x2100, 0x214F)),
    _a("Enclosed_Alphanumerics", "train", (0x2460, 0x24FF)),
    _a("Georgian_Asomtavruli", "val", (0x10A0, 0x10CF)),
    _a("Lao", "val", (0xE80, 0xEFF)),
    _a("Dingbats", "val", (0x2700, 0x27BF)),
    _a("Phonetic_Extensions", "val", (0x1D00, 0x1D7F)),
    _a("Supplemental_Arrows", "val", (0x27F0, 0x27FF), (0x2900, 0x297F)),
    _a("NKo", "test", (0x7C0, 0x7FF)),
    _a("Tifinagh", "test", (0x2D30, 0x2D7F)),
    _a("Georgian_Nuskhuri", "test", (0x2D00, 0x2D2F)),
    _a("Number_Forms", "test", (0x2150, 0x218F)),
    _a("Old_Italic", "test", (0x10300, 0x1032F)),
    _a("Cyrillic_Extended", "test", (0x500, 0x52F), (0xA640, 0xA69F)),
    _a("Latin_Extended_CD", "test", (0x2C60, 0x2C7F), (0xA720, 0xA7FF)),
    _a("Miscellaneous_Technical", "test", (0x2300, 0x23FF)),
    _a("Mathematical_Symbols_Supplement", "test", (0x27C0, 0x27EF), (0x2980, 0x2AFF)),
)
