"""PNG bar charts of benchmark results, drawn with OpenCV (no plotting library needed on a robot)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

Panel = tuple[str, Sequence[tuple[str, float]]]  # (heading, [(bar label, value), ...])

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_ROW, _HEAD, _LABEL_W, _WIDTH = 26, 34, 300, 960


def bar_chart(path: str | Path, title: str, panels: Sequence[Panel]) -> Path:
    """One panel of horizontal bars per metric, each scaled to its panel's largest value and labelled with it.

    Values that are not finite are drawn as 'n/a'. Returns the path written.
    """
    height = 44 + sum(_HEAD + _ROW * len(bars) + 10 for _, bars in panels)
    img = np.full((height, _WIDTH, 3), 255, np.uint8)
    cv2.putText(img, title, (10, 28), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    y = 44
    for heading, bars in panels:
        cv2.putText(img, heading, (10, y + 22), _FONT, 0.55, (60, 60, 60), 1, cv2.LINE_AA)
        y += _HEAD
        finite = [v for _, v in bars if math.isfinite(v)]
        top = max(finite, default=0.0) or 1.0
        for label, value in bars:
            cv2.putText(img, label[:40], (10, y + 18), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            if math.isfinite(value):
                length = int((_WIDTH - _LABEL_W - 110) * max(value, 0.0) / top)
                cv2.rectangle(img, (_LABEL_W, y + 4), (_LABEL_W + length, y + _ROW - 4), (180, 110, 40), -1)
                text, x = f"{value:,.1f}", _LABEL_W + length + 6
            else:
                text, x = "n/a", _LABEL_W
            cv2.putText(img, text, (x, y + 18), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            y += _ROW
        y += 10
    path = Path(path)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path
