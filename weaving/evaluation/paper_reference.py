"""The published values of the Weight Weaving paper, kept as data beside the measured ones.

Source: L. Chaves et al., "Weight Weaving: Parameter Pooling for Data-Free Model Merging", arXiv 2510.13921,
Tables 1, 2 and 3 (average accuracy in %, as printed). Each value of Tables 1 and 2 is a mean per backbone
and setup: over the 8 tasks (multi-task), over the 8 held-out tasks (domain generalization), and over the
continual benchmarks (CIFAR100 and ImageNet-R in 5, 10, 20, 50 parts, CUB200 and StanfordCars in 5, 10,
20). The paper prints no per-task or per-benchmark values, so a continual job (one dataset, one split
count) compares to its backbone's continual average only loosely. Table 3 averages all setups and
backbones per pooling.

`reference_value` finds the published value of a results row; results.md shows it and the difference
next to the row's mean when a job sets `reference` (`ComparisonModule(reference="auto")`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SOURCE = "Weight Weaving (Chaves et al., arXiv 2510.13921)"
BACKBONES = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
SETUPS = ("multi_task", "continual", "domain_generalization")
# the column order of Tables 1 and 2: each setup, then each backbone
COLUMNS = tuple((setup, backbone) for setup in SETUPS for backbone in BACKBONES)

# Table 1: each method at the lambda it lists; recommended: marked * (the authors' value, tuned on evaluation data)
TABLE1: dict[str, dict[str, Any]] = {
    "task_arithmetic": {"lam": 0.3, "recommended": True, "avg": 53.10,
                        "values": (68.37, 74.86, 82.91, 25.18, 28.61, 35.10, 44.70, 53.54, 64.57)},
    "dare": {"lam": 0.3, "recommended": True, "avg": 53.07,
             "values": (68.22, 74.83, 82.92, 25.14, 28.62, 35.10, 44.71, 53.54, 64.59)},
    "breadcrumbs": {"lam": 0.3, "recommended": True, "avg": 64.97,
                    "values": (64.22, 70.21, 75.67, 59.40, 59.98, 75.57, 52.33, 59.82, 67.59)},
    "magmax": {"lam": 0.5, "recommended": True, "avg": 69.96,
               "values": (70.49, 74.23, 82.02, 68.53, 74.64, 82.38, 51.76, 58.51, 67.10)},
    "ties": {"lam": 1.0, "recommended": False, "avg": 68.39,
             "values": (72.32, 78.43, 83.78, 66.04, 71.86, 80.96, 45.18, 53.78, 63.16)},
    "pcb": {"lam": 1.0, "recommended": False, "avg": 71.41,
            "values": (75.94, 80.89, 86.81, 67.30, 73.92, 81.95, 51.56, 58.69, 65.63)},
    "tsv": {"lam": 1.0, "recommended": False, "avg": 73.11,
            "values": (83.60, 87.23, 90.47, 68.33, 74.79, 82.84, 49.72, 54.47, 66.54)},
    "iso_c": {"lam": 1.0, "recommended": False, "avg": 72.38,
              "values": (82.69, 87.03, 90.60, 66.64, 61.74, 81.44, 53.20, 59.17, 68.95)},
}

# Table 2: data-free, lambda = 1 ("lam") and Weight Weaving with mean pooling ("weave"); avg as printed
TABLE2: dict[str, dict[str, Any]] = {
    "breadcrumbs": {"lam": (67.29, 74.78, 82.63, 24.34, 24.67, 37.26, 42.59, 51.72, 64.26),
                    "weave": (66.15, 71.99, 77.38, 66.00, 70.42, 80.70, 52.47, 60.06, 67.87), "avg": (52.17, 68.11)},
    "magmax": {"lam": (66.55, 72.84, 71.55, 58.16, 65.42, 70.77, 38.86, 47.19, 49.90),
               "weave": (69.54, 74.01, 82.16, 67.72, 73.94, 81.97, 51.82, 58.92, 67.87), "avg": (60.14, 69.77)},
    "ties": {"lam": (72.32, 78.43, 83.78, 66.04, 71.86, 80.96, 45.18, 53.78, 63.16),
             "weave": (73.47, 78.28, 84.12, 68.18, 74.12, 82.06, 52.48, 59.88, 68.27), "avg": (68.39, 71.21)},
    "pcb": {"lam": (75.94, 80.89, 86.81, 67.30, 73.92, 81.95, 51.56, 58.69, 65.63),
            "weave": (75.55, 80.77, 86.43, 68.31, 74.24, 82.02, 52.88, 60.29, 68.42), "avg": (71.41, 72.10)},
    "tsv": {"lam": (83.60, 87.23, 90.47, 68.33, 74.79, 82.84, 49.72, 54.47, 66.54),
            "weave": (80.78, 86.26, 89.91, 68.74, 75.10, 82.61, 53.81, 60.16, 68.70), "avg": (73.11, 74.01)},
    "iso_c": {"lam": (82.69, 87.03, 90.60, 66.64, 61.74, 81.44, 53.20, 59.17, 68.95),
              "weave": (78.33, 86.03, 89.12, 69.43, 75.60, 83.07, 53.71, 60.22, 68.51), "avg": (72.38, 73.78)},
}

# Table 3: Weight Weaving's average over all setups and backbones, per pooling
TABLE3: dict[str, dict[str, float]] = {
    "breadcrumbs": {"mean": 68.11, "random": 68.11, "magmax": 51.93},
    "magmax": {"mean": 69.77, "random": 69.75, "magmax": 60.14},
    "ties": {"mean": 71.21, "random": 71.21, "magmax": 54.56},
    "pcb": {"mean": 72.10, "random": 72.08, "magmax": 50.36},
    "tsv": {"mean": 74.01, "random": 73.64, "magmax": 55.72},
    "iso_c": {"mean": 73.78, "random": 73.61, "magmax": 64.34},
}

REFERENCES = ("auto",) + BACKBONES


def check_reference(reference: str | None) -> str | None:
    """None, "auto" (the backbone of the job's model) or a backbone name; else a one-line ValueError."""
    if reference is not None and reference not in REFERENCES:
        raise ValueError(f"reference {reference!r}: expected one of {', '.join(REFERENCES)} (or null for none)")
    return reference


def backbone_of(model: str | None) -> str | None:
    """The paper's backbone an open_clip model name is (ViT-B-32-quickgelu -> ViT-B-32), or None."""
    name = (model or "").removesuffix("-quickgelu")
    return name if name in BACKBONES else None


def reference_value(backbone: str, setup: str, row: Mapping[str, Any]) -> tuple[float, str] | None:
    """(published mean in %, "Table N") for a results row, or None when the paper has no such value."""
    if setup not in SETUPS or backbone not in BACKBONES:
        return None
    column = COLUMNS.index((setup, backbone))
    method, variant = row.get("method"), row.get("variant", "weave" if row.get("weave") else "lam")
    if variant == "weave" and row.get("pooling") == "mean" and method in TABLE2:
        return TABLE2[method]["weave"][column], "Table 2"
    if variant == "lam" and row.get("lam") == 1.0:
        if method in TABLE2:
            return TABLE2[method]["lam"][column], "Table 2"
        if method in TABLE1 and TABLE1[method]["lam"] == 1.0:
            return TABLE1[method]["values"][column], "Table 1"
    if variant in ("recommended", "lam") and method in TABLE1 and TABLE1[method]["recommended"] \
            and row.get("lam") == TABLE1[method]["lam"]:
        return TABLE1[method]["values"][column], "Table 1"
    return None
