"""weaving: data-free model merging and Weight Weaving for CLIP task vectors."""

__version__ = "0.1.0"
