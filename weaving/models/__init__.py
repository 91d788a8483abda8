"""CLIP models and zero-shot heads. Importing this package registers the tiny offline open_clip configs."""

from weaving.models.clip import (
    TINY_MODELS,
    CLIPBundle,
    encode_images,
    image_transforms,
    load_clip,
    load_visual_state_dict,
    visual_state_dict,
)
from weaving.models.heads import ClassificationHead, build_head, zero_shot_weights

__all__ = [
    "TINY_MODELS",
    "CLIPBundle",
    "ClassificationHead",
    "build_head",
    "encode_images",
    "image_transforms",
    "load_clip",
    "load_visual_state_dict",
    "visual_state_dict",
    "zero_shot_weights",
]
