"""Paper 001 (Li et al. 2021, arXiv 2107.08039), Tables 2 and 4 and the counts table: the 5-shot linear-SVM
accuracies (%, mean of 50 trials, one distillation run each) as printed in shared/papers/001_b020132946a86d6a.txt,
with their line numbers, and the related-task sets of specs/001-consolidation.md §2.1.

Captions are lost in the text; the identities are the spec's (§3.0). Table 4's Food101 and iFashion column headers
are lost too and read as Food101 (full) and iFashion sleeve (spec §3.2). Only the ImageNet rows and the ten
single-teacher RC/TD pairs are stored: they are what the counts table (L87–L89) is computed from.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAPER_FILE", "TASKS", "TEACHERS", "RELATED", "Table4Row", "TABLE4_ROWS", "Table2Block", "TABLE2",
           "PRINTED_COUNTS", "COUNTS_LINES", "table4", "unrelated_tasks"]

PAPER_FILE = "shared/papers/001_b020132946a86d6a.txt"

#: Table 4's downstream columns (d-splits, except Food101: all classes; iFashion: the sleeve label group)
TASKS: tuple[str, ...] = ("Cars196", "Resisc45", "iFood", "Food101", "iFashion", "DTD", "Flowers", "Caltech256",
                          "CUB", "Aircrafts")

#: the ten single-teacher t-splits of Table 4, in printed order
TEACHERS: tuple[str, ...] = ("Cars196", "Resisc45", "iFood", "iFashion", "DTD", "Flowers", "Caltech256", "CUB",
                             "Aircrafts", "iNaturalist")

#: teacher → its related downstream tasks (spec §2.1: own d-split; + Food101 for iFood; CUB and Flowers for
#: iNaturalist, which has no d-split column); every other column is unrelated
RELATED: dict[str, tuple[str, ...]] = {
    "Cars196": ("Cars196",), "Resisc45": ("Resisc45",), "iFood": ("iFood", "Food101"), "iFashion": ("iFashion",),
    "DTD": ("DTD",), "Flowers": ("Flowers",), "Caltech256": ("Caltech256",), "CUB": ("CUB",),
    "Aircrafts": ("Aircrafts",), "iNaturalist": ("CUB", "Flowers"),
}


@dataclass(frozen=True)
class Table4Row:
    """One printed row of Table 4: `key` is "IN", "SL" or "<teacher> RC" / "<teacher> TD"; values follow TASKS."""

    key: str
    label: str
    line: int
    values: tuple[float, ...]


def _row(key: str, label: str, line: int, *values: float) -> Table4Row:
    assert len(values) == len(TASKS), key
    return Table4Row(key, label, line, tuple(values))


TABLE4_ROWS: tuple[Table4Row, ...] = (
    _row("IN", "ImageNet-pretrained model", 203, 31.94, 70.66, 28.94, 36.95, 89.06, 60.98, 83.84, 80.28, 54.73, 30.71),
    _row("SL", "ImageNet-pretrained, soft-label", 204,
         31.47, 69.99, 29.21, 37.29, 89.18, 60.44, 82.86, 81.35, 57.19, 29.77),
    _row("Cars196 RC", "Cars196 (t-split) repr. consolid.", 205,
         59.21, 70.00, 28.42, 35.28, 89.00, 58.99, 83.01, 80.26, 54.02, 29.85),
    _row("Cars196 TD", "Cars196 (t-split) trad. distill", 206,
         59.39, 51.56, 9.75, 11.54, 84.27, 36.07, 59.91, 35.51, 16.90, 16.82),
    _row("Resisc45 RC", "Resisc45 (t-split) repr. consolid.", 207,
         30.80, 72.64, 28.77, 36.37, 89.03, 60.08, 82.75, 80.77, 55.47, 29.17),
    _row("Resisc45 TD", "Resisc45 (t-split) trad. distill", 208,
         8.97, 61.62, 9.85, 12.11, 84.97, 37.80, 56.06, 34.14, 11.23, 11.57),
    _row("iFood RC", "iFood (t-split) repr. consolid.", 209,
         29.44, 69.49, 38.85, 47.19, 89.04, 57.16, 82.66, 79.17, 51.07, 27.31),
    _row("iFood TD", "iFood (t-split) trad. distill", 210,
         12.85, 53.57, 35.26, 44.05, 85.39, 36.62, 70.99, 39.94, 17.95, 14.90),
    _row("iFashion RC", "iFashion category task repr. consolid.", 211,
         31.89, 70.02, 29.23, 37.45, 89.15, 60.76, 83.28, 81.29, 57.10, 30.24),
    _row("iFashion TD", "iFashion category task trad. distill", 212,
         6.41, 37.97, 6.26, 8.09, 90.70, 23.45, 44.01, 30.32, 9.28, 9.27),
    _row("DTD RC", "DTD (t-split) repr. consolid.", 213,
         31.33, 69.78, 29.17, 37.38, 89.08, 61.43, 82.80, 81.28, 56.09, 29.59),
    _row("DTD TD", "DTD (t-split) trad. distill", 214,
         11.29, 53.12, 14.11, 19.00, 86.39, 46.80, 62.48, 46.38, 17.14, 14.75),
    _row("Flowers RC", "Flowers (t-split) repr. consolid.", 215,
         31.81, 69.94, 29.46, 37.01, 89.13, 60.06, 84.79, 81.18, 57.07, 30.41),
    _row("Flowers TD", "Flowers (t-split) trad. distill", 216,
         16.72, 58.08, 16.68, 20.67, 87.03, 44.70, 77.35, 54.49, 31.32, 20.26),
    _row("Caltech256 RC", "Caltech256 (t-split) repr. consolid.", 217,
         31.71, 69.36, 29.18, 36.97, 89.08, 61.07, 83.14, 81.28, 56.63, 29.98),
    _row("Caltech256 TD", "Caltech256 (t-split) trad. distill", 218,
         21.6, 59.67, 19.44, 25.10, 87.35, 51.59, 75.52, 68.98, 36.09, 23.32),
    _row("CUB RC", "CUB (t-split) repr. consolid.", 219,
         31.50, 70.35, 29.16, 36.83, 89.20, 60.32, 83.30, 80.89, 66.37, 29.65),
    _row("CUB TD", "CUB (t-split) trad. distill", 220,
         17.15, 57.95, 17.06, 20.72, 87.03, 46.37, 72.16, 53.26, 62.41, 19.00),
    _row("Aircrafts RC", "Aircrafts (t-split) repr. consolid.", 221,
         30.71, 69.58, 28.25, 35.54, 89.06, 58.67, 81.36, 80.54, 53.95, 55.26),
    _row("Aircrafts TD", "Aircrafts (t-split) trad. distill", 222,
         10.56, 44.30, 7.81, 9.09, 84.17, 29.16, 48.32, 29.18, 10.87, 58.51),
    _row("iNaturalist RC", "iNaturalist (t-split) repr. consolid.", 223,
         30.08, 69.67, 27.35, 34.52, 88.70, 57.28, 84.77, 78.01, 67.58, 27.94),
    _row("iNaturalist TD", "iNaturalist (t-split) trad. distill", 224,
         13.51, 57.25, 14.66, 18.68, 84.46, 39.49, 79.74, 41.59, 57.49, 16.98),
)


@dataclass(frozen=True)
class Table2Block:
    """One half of Table 2: rows IN, T, TD, RC; `columns[0]` is the upstream t-split accuracy (None for IN), the
    others are 5-shot SVM downstream tasks named as in TASKS; `table4_rows` maps a row to its Table 4 row key."""

    teacher: str
    lines: tuple[int, int]
    columns: tuple[str, ...]
    rows: dict[str, tuple[float | None, ...]]
    table4_rows: dict[str, str]


TABLE2: tuple[Table2Block, ...] = (
    Table2Block("iFood", (68, 71), ("upstream", "iFood", "Food101", "Resisc45"),
                {"IN": (None, 28.9, 37.0, 70.7), "T": (74.4, 34.8, 42.8, 53.3),
                 "TD": (72.8, 35.3, 44.0, 53.6), "RC": (68.6, 38.8, 47.2, 69.5)},
                {"IN": "IN", "TD": "iFood TD", "RC": "iFood RC"}),
    Table2Block("Resisc45", (77, 80), ("upstream", "Resisc45", "iFood", "Food101"),
                {"IN": (None, 70.7, 28.9, 37.0), "T": (98.2, 67.9, 14.8, 17.9),
                 "TD": (97.9, 61.6, 9.9, 12.1), "RC": (97.0, 72.6, 28.8, 36.4)},
                {"IN": "IN", "TD": "Resisc45 TD", "RC": "Resisc45 RC"}),
)

#: the printed counts table (better, similar, worse) for (related, unrelated), 001 L87–L89
PRINTED_COUNTS: dict[tuple[str, str], tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    ("RC", "IN"): ((6, 4, 0), (0, 10, 0)),
    ("RC", "TD"): ((7, 1, 2), (10, 0, 0)),
    ("TD", "IN"): ((5, 1, 4), (0, 0, 10)),
}
COUNTS_LINES = (87, 89)


def table4() -> dict[str, dict[str, float]]:
    """Table 4's stored rows as {row key: {task: accuracy}} (keys: IN, SL, "<teacher> RC", "<teacher> TD")."""
    return {r.key: dict(zip(TASKS, r.values)) for r in TABLE4_ROWS}


def unrelated_tasks(teacher: str) -> tuple[str, ...]:
    """The columns of Table 4 that are not related to `teacher` (spec §2.1)."""
    return tuple(t for t in TASKS if t not in RELATED[teacher])
