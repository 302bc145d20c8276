"""Paper 003 (Jha, Saini, Mittal 2020, arXiv 2006.16589), Tables 1–6: the twelve CIFAR-100 top-1 accuracy
grid halves (single runs, %) as printed at 003 txt L33–L181, with the printed Acc. drop and Distil. gain rows.

Each half: rows = residual teachers R-t trained on hard targets, columns = non-residual students NR-s trained
with KD from them; then Baseline (R-s, CE), NR-baseline (NR-s, CE), Acc. drop, Distil. gain (specs/003 §4).
Variant names: `gk` = constant number of groups k, `Gk` = constant channels per group k (G1 = depthwise).

The text never says which table is which network: the table → family mapping below is INFERRED
(specs/003-kd-residual.md §1.6, high confidence: Table 1 ResNet-18, 2 MobileNet-V2, 3 WRN-22×2, 4 WRN-22×10,
5 WRN-28×2, 6 WRN-40×2). R-G1's own accuracy is printed nowhere; the other teachers' accuracies are the other
half's Baseline row (`teacher_accuracy`).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILY_NAMES", "HALVES", "MAPPING_INFERRED", "GridHalf", "halves_of", "teacher_accuracy"]

#: family key → the network's printed name (keys shared with `reference.p003_costs`)
FAMILY_NAMES = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNet-V2", "wrn22_2": "WRN-22×2",
                "wrn22_10": "WRN-22×10", "wrn28_2": "WRN-28×2", "wrn40_2": "WRN-40×2"}

#: the table → network mapping is inferred from the paper's sentences, not printed (specs/003 §1.6)
MAPPING_INFERRED = True


@dataclass(frozen=True)
class GridHalf:
    """One printed half-table: `kd[i][j]` = Acc(NR-students[j] ← R-teachers[i]); rows as printed (%)."""

    table: int
    family: str
    side: str  # "left" (constant-g students, constant-G teachers) or "right" (the reverse)
    lines: tuple[int, int]  # first and last line in shared/papers/003_330178c6543248a4.txt
    teachers: tuple[str, ...]
    students: tuple[str, ...]
    kd: tuple[tuple[float, ...], ...]
    baseline: tuple[float, ...]
    nr_baseline: tuple[float, ...]
    acc_drop: tuple[float, ...]
    distil_gain: tuple[float, ...]


HALVES: tuple[GridHalf, ...] = (
    GridHalf(1, 'resnet18', 'left', (33, 43),
             teachers=('G1', 'G2', 'G4', 'G8', 'G16'), students=('g2', 'g4', 'g8', 'g16'),
             kd=((71.93, 71.3, 71.84, 73.17),
                 (70.76, 72.38, 72.38, 73.61),
                 (70.14, 71.98, 71.07, 73.79),
                 (70.23, 72.04, 72.82, 73.33),
                 (70.19, 71.98, 72.27, 73.55)),
             baseline=(73.47, 72.59, 71.64, 71.53), nr_baseline=(66.14, 66.43, 69.24, 70.47),
             acc_drop=(7.33, 6.16, 2.4, 1.06), distil_gain=(-1.54, -0.21, 1.18, 2.26)),
    GridHalf(1, 'resnet18', 'right', (44, 53),
             teachers=('g2', 'g4', 'g8', 'g16'), students=('G2', 'G4', 'G8', 'G16'),
             kd=((73.88, 73.81, 72.76, 72.86),
                 (73.31, 73.91, 73.31, 71.12),
                 (73.30, 73.40, 73.69, 71.18),
                 (73.60, 72.56, 73.47, 73.16)),
             baseline=(71.08, 71.18, 71.36, 72.22), nr_baseline=(69.72, 69.45, 69.22, 68.58),
             acc_drop=(1.36, 1.73, 2.14, 3.64), distil_gain=(2.8, 2.73, 2.33, 0.94)),
    GridHalf(2, 'mobilenet_v2', 'left', (54, 64),
             teachers=('G1', 'G2', 'G4', 'G8', 'G16'), students=('g2', 'g4', 'g8', 'g16'),
             kd=((67.3, 67.32, 67.09, 67.85),
                 (67.38, 66.86, 65.51, 67.27),
                 (67.54, 67.28, 67.4, 67.55),
                 (67.44, 66.5, 67.02, 67.4),
                 (67.67, 67.15, 67.65, 65.93)),
             baseline=(68.11, 69.52, 69.93, 70.25), nr_baseline=(58.68, 58.72, 58.77, 58.79),
             acc_drop=(9.43, 10.8, 11.16, 11.46), distil_gain=(-0.44, -2.2, -2.28, -2.4)),
    GridHalf(2, 'mobilenet_v2', 'right', (65, 74),
             teachers=('g2', 'g4', 'g8', 'g16'), students=('G2', 'G4', 'G8', 'G16'),
             kd=((66.21, 65.88, 66.01, 67.66),
                 (67.07, 67.37, 67.40, 67.55),
                 (67.54, 67.63, 67.80, 67.58),
                 (67.62, 67.45, 68.13, 68.33)),
             baseline=(70.36, 70.28, 70.25, 68.88), nr_baseline=(60.77, 59.66, 58.62, 57.18),
             acc_drop=(9.59, 10.62, 11.63, 11.7), distil_gain=(-2.74, -2.65, -2.12, -0.55)),
    GridHalf(3, 'wrn22_2', 'left', (95, 105),
             teachers=('G1', 'G2', 'G4', 'G8', 'G16'), students=('g2', 'g4', 'g8', 'g16'),
             kd=((66.52, 68.08, 69.42, 70.56),
                 (66.68, 68.57, 69.56, 69.38),
                 (66.46, 69.02, 69.6, 70.96),
                 (66.65, 68.13, 70.64, 69.05),
                 (66.54, 67.86, 70.42, 70.32)),
             baseline=(71.13, 69.92, 69.29, 68.74), nr_baseline=(64.01, 65.58, 66.26, 66.59),
             acc_drop=(7.12, 4.34, 3.03, 2.15), distil_gain=(-4.45, -0.9, 1.35, 2.22)),
    GridHalf(3, 'wrn22_2', 'right', (106, 115),
             teachers=('g2', 'g4', 'g8', 'g16'), students=('G2', 'G4', 'G8', 'G16'),
             kd=((69.70, 69.61, 67.25, 68.05),
                 (69.78, 69.41, 68.12, 67.48),
                 (69.75, 69.32, 68.46, 66.30),
                 (69.51, 69.15, 66.92, 66.03)),
             baseline=(68.04, 68.88, 69.04, 69.53), nr_baseline=(65.98, 65.82, 65.19, 65.08),
             acc_drop=(2.06, 3.06, 3.85, 4.45), distil_gain=(1.74, 0.73, -0.58, -1.48)),
    GridHalf(4, 'wrn22_10', 'left', (116, 126),
             teachers=('G1', 'G2', 'G4', 'G8', 'G16'), students=('g2', 'g4', 'g8', 'g16'),
             kd=((75.15, 75.25, 77.21, 77.1),
                 (75, 76.44, 76.44, 77.01),
                 (73.05, 75.39, 76.44, 76.87),
                 (75.68, 75.64, 76.43, 78.03),
                 (75.07, 73.54, 76.63, 77.8)),
             baseline=(77.26, 77.15, 77.11, 77.06), nr_baseline=(69.61, 71.05, 71.83, 73.32),
             acc_drop=(7.65, 6.1, 5.28, 3.74), distil_gain=(-1.58, -0.71, 0.1, 0.97)),
    GridHalf(4, 'wrn22_10', 'right', (127, 136),
             teachers=('g2', 'g4', 'g8', 'g16'), students=('G2', 'G4', 'G8', 'G16'),
             kd=((77.55, 78.21, 77.92, 76.70),
                 (78.17, 77.95, 77.85, 76.58),
                 (77.70, 78.16, 77.79, 78.19),
                 (78.05, 78.10, 77.49, 78.17)),
             baseline=(75.46, 75.57, 75.59, 76.22), nr_baseline=(74.63, 74.16, 73.7, 71.1),
             acc_drop=(0.83, 1.41, 1.89, 5.12), distil_gain=(2.71, 2.64, 2.33, 1.97)),
    GridHalf(5, 'wrn28_2', 'left', (140, 150),
             teachers=('G1', 'G2', 'G4', 'G8', 'G16'), students=('g2', 'g4', 'g8', 'g16'),
             kd=((66.02, 65.63, 68.66, 70.02),
                 (62.43, 65.38, 67.06, 69.95),
                 (66.43, 65.4, 67.28, 68.94),
                 (64.62, 65.5, 68.71, 68.87),
                 (65.01, 65.8, 64.98, 69.6)),
             baseline=(70.84, 70.3, 69.93, 69.57), nr_baseline=(62.06, 62.26, 62.39, 64.37),
             acc_drop=(8.78, 8.04, 7.54, 5.2), distil_gain=(-4.41, -4.5, -1.22, 0.45)),
    GridHalf(5, 'wrn28_2', 'right', (151, 160),
             teachers=('g2', 'g4', 'g8', 'g16'), students=('G2', 'G4', 'G8', 'G16'),
             kd=((68.98, 67.32, 66.56, 65.24),
                 (68.72, 68.37, 64.37, 65.49),
                 (69.14, 68.05, 67.42, 65.45),
                 (68.94, 68.52, 67.66, 65.39)),
             baseline=(68.62, 68.82, 69.14, 70.28), nr_baseline=(62.53, 62.37, 61.92, 61.76),
             acc_drop=(6.09, 6.45, 7.22, 8.52), distil_gain=(0.52, -0.3, -1.48, -4.79)),
    GridHalf(6, 'wrn40_2', 'left', (161, 171),
             teachers=('G1', 'G2', 'G4', 'G8', 'G16'), students=('g2', 'g4', 'g8', 'g16'),
             kd=((55.85, 57.32, 58.87, 57.26),
                 (55.26, 58.19, 59.75, 64.44),
                 (54.64, 58.13, 61.71, 64.9),
                 (56.92, 61.42, 59.73, 64.67),
                 (53.64, 55.5, 61.78, 62.42)),
             baseline=(71.21, 70.34, 70.13, 69.98), nr_baseline=(43.92, 42.86, 42.58, 40.49),
             acc_drop=(27.29, 27.48, 27.55, 29.49), distil_gain=(-14.29, -8.92, -8.35, -5.08)),
    GridHalf(6, 'wrn40_2', 'right', (172, 181),
             teachers=('g2', 'g4', 'g8', 'g16'), students=('G2', 'G4', 'G8', 'G16'),
             kd=((63.19, 62.13, 60.96, 57.29),
                 (64.45, 64.41, 61.04, 61.13),
                 (62.22, 62.46, 61.38, 57.79),
                 (64.50, 64.91, 62.66, 60.91)),
             baseline=(68.52, 69.34, 69.54, 70.17), nr_baseline=(38.47, 45.88, 47.55, 49.49),
             acc_drop=(30.05, 23.46, 21.99, 20.68), distil_gain=(-4.02, -4.43, -6.88, -9.04)),
)


def halves_of(family: str) -> tuple[GridHalf, ...]:
    """The (left, right) halves printed for one family key."""
    return tuple(h for h in HALVES if h.family == family)


def teacher_accuracy(family: str) -> dict[str, float]:
    """Printed CE accuracy of each residual network R-x of a family: the Baseline rows of its two halves
    (every variant except G1, whose accuracy the paper never prints; specs/003 §2.1, §4)."""
    return {s: acc for h in halves_of(family) for s, acc in zip(h.students, h.baseline)}
