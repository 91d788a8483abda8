"""weaving: data-free model merging and Weight Weaving for CLIP task vectors.

    import weaving
    merged = weaving.merge(pretrained, task_vectors, "ties", lam=1.0, k=0.2)
    woven = weaving.weave(pretrained, task_vectors, "ties", "0.1:1.5:0.1", pooling="mean")
"""

from weaving.merging import (
    METHODS,
    POOLINGS,
    load_task_vector,
    merge,
    parse_lambdas,
    read_metadata,
    run_recipe,
    save_task_vector,
    weave,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS", "POOLINGS", "load_task_vector", "merge", "parse_lambdas", "read_metadata", "run_recipe", "save_task_vector",
    "weave", "__version__",
]
