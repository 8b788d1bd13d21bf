"""The embedded model's prompt and vocabulary facts: what the runtime needs to ask it and read its answers.

The model sees `<image>` followed by the instruction and the answer marker; it answers after a space. Boxes in
its answers are `label<loc_x0><loc_y0><loc_x1><loc_y1>`, each a bin in [0, LOC_BINS) of the source image
normalised by its width / height (the Florence-2 convention), read by vlm_ros.models.parsing.parse_loc_tokens.
Training (tasks.py, train.py) writes its data in this same format.
"""

from __future__ import annotations

LOC_BINS = 64
DEFAULT_DESCRIBE_INSTRUCTION = "describe the scene"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD, BOS, EOS, UNK, IMAGE = SPECIAL_TOKENS
ANSWER_MARKER = " answer:"


def build_prompt(instruction: str) -> str:
    """The one prompt format: image placeholder, instruction, answer marker (the answer follows after a space)."""
    return f"{IMAGE}{instruction.strip()}{ANSWER_MARKER}"
