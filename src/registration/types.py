"""The keypoints every part of registration speaks: one record per image, in the ORIGINAL
image's pixels (x to the right, y down)."""

from __future__ import annotations

from dataclasses import dataclass

POINTS = ("middle", "thumb", "capitate")  # middle-finger tip, thumb tip, centre of the capitate
METHODS = ("learned", "heuristic", "fallback")
KEYPOINT_COLUMNS = ["id", "middle_x", "middle_y", "thumb_x", "thumb_y", "capitate_x", "capitate_y",
                    "confidence", "mirrored", "method"]


@dataclass
class HandKeypoints:
    """The paper's three points for one image.

    `middle`: tip of the middle finger's distal phalanx; `thumb`: tip of the thumb's distal
    phalanx; `capitate`: centre of the capitate. `confidence` is in [0, 1]. `mirrored` is True
    when the film shows the hand mirrored (a left hand seen as a right one: on a normal RSNA
    film the thumb lies to the right of the middle finger, on a mirrored one to the left).
    `method` is one of METHODS.
    """

    middle: tuple[float, float]
    thumb: tuple[float, float]
    capitate: tuple[float, float]
    confidence: float
    mirrored: bool
    method: str

    def row(self, image_id: str) -> dict:
        """This record as a row of registration/keypoints.csv (KEYPOINT_COLUMNS)."""
        out = {"id": str(image_id)}
        for name in POINTS:
            x, y = getattr(self, name)
            out[f"{name}_x"], out[f"{name}_y"] = round(float(x), 2), round(float(y), 2)
        out.update(confidence=round(float(self.confidence), 4), mirrored=bool(self.mirrored), method=self.method)
        return out
