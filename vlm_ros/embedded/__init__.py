"""The embedded default model: a tiny LLaVA trained here on rendered table-top scenes (no download, no GPU).

- scenes.py: deterministic renderer with ground truth (boxes, depth, 3-D positions)
- tasks.py: instructions/answers (the model's I/O contract), `<loc_N>` box tokens
- model.py: tokenizer, processor, model definition, `build_prompt`, `load`, `DEFAULT_WEIGHTS_DIR`
- train.py / evaluate.py: `python -m vlm_ros.embedded.train`, `python -m vlm_ros.embedded.evaluate`
"""
