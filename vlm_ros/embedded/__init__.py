"""The embedded default model: a tiny LLaVA trained here on rendered table-top scenes (no download, no GPU).

Runtime (the node uses these):
- prompt.py: the prompt format, the `<loc_N>` box format and its bins
- model.py: `EmbeddedConfig`, `DEFAULT_WEIGHTS_DIR`, `load`; weights/: the shipped weights
Development (training and evaluation; the runtime never imports them):
- scenes.py: deterministic renderer with ground truth (boxes, depth, 3-D positions)
- tasks.py: instructions and answers (training and evaluation data)
- build.py: tokenizer, processor and random-weight model built from config objects, `save`
- train.py / evaluate.py: `python -m vlm_ros.embedded.train`, `python -m vlm_ros.embedded.evaluate`;
  weights.train.log is the shipped weights' training log (TRAINING.md)
"""
