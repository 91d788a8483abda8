"""Default lambda search spaces for Weight Weaving, per method and setup (the paper's section 4).

The one place these defaults live: MergeModule, the comparison runner and the demo all read them here.
"""

from __future__ import annotations

SETUPS = ("multi_task", "continual", "domain_generalization")

DEFAULT_SEARCH_SPACE = "0.1:1.0:0.1"

# Multi-task learning uses the ranges proposed by each method's authors; every other (method, setup)
# pair uses DEFAULT_SEARCH_SPACE. ISO-CTS shares ISO-C's range (same family, same scale of g).
MULTI_TASK_SEARCH_SPACES = {
    "ties": "0.1:1.5:0.1",
    "pcb": "0.1:2.5:0.1",
    "tsv": "0.5:2.0:0.1",
    "iso_c": "0.1:2.0:0.1",
    "iso_cts": "0.1:2.0:0.1",
}


def check_setup(setup: str) -> str:
    """Return `setup` if it is a known setup name, else raise a one-line ValueError listing them."""
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; expected one of: {', '.join(SETUPS)}")
    return setup


def default_search_space(method: str, setup: str = "multi_task") -> str:
    """The paper's lambda search space ("start:stop:step", inclusive) for `method` in `setup`."""
    check_setup(setup)
    if setup == "multi_task":
        return MULTI_TASK_SEARCH_SPACES.get(method, DEFAULT_SEARCH_SPACE)
    return DEFAULT_SEARCH_SPACE


# The lambda each method's authors recommend after tuning on evaluation data, as the Weight Weaving paper's
# Table 1 marks them (*): 0.3 for Task Arithmetic, DARE and Breadcrumbs, 0.5 for MagMax; the other methods
# were proposed data-free, at lambda = 1.
RECOMMENDED_LAMBDAS = {"task_arithmetic": 0.3, "dare": 0.3, "breadcrumbs": 0.3, "magmax": 0.5}


def recommended_lambda(method: str) -> float:
    """The authors' recommended lambda of `method` (1.0 where they recommend none)."""
    return RECOMMENDED_LAMBDAS.get(method, 1.0)
