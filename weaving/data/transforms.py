"""Image steps shared by the dataset factories."""

from __future__ import annotations

from typing import Any, Callable


class ToRGB:
    """Convert a PIL image to RGB, then apply `transform` (picklable, so DataLoader workers can use it)."""

    def __init__(self, transform: Callable | None = None) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        if hasattr(image, "convert"):
            image = image.convert("RGB")
        return self.transform(image) if self.transform is not None else image

    def __repr__(self) -> str:
        return f"ToRGB({self.transform!r})"
