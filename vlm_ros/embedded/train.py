"""Train the embedded model on rendered scenes: `python -m vlm_ros.embedded.train [--out DIR] [--steps N] ...`.

Data: a pool of scenes rendered from the train seed range (pixel values pre-computed at model resolution),
with a fresh question per scene draw from tasks.make_example. Loss only on the answer tokens (+ EOS).
AdamW, linear warmup, cosine decay. With --minutes, the step count is capped after a short timing so the
whole run (rendering included) fits the budget; the step count actually used is logged and saved, and
`--steps <that> --minutes 0` reproduces the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from vlm_ros.embedded.model import (
    DEFAULT_WEIGHTS_DIR,
    IMAGE,
    EmbeddedConfig,
    build_model,
    build_prompt,
    preprocess_images,
    save,
)
from vlm_ros.embedded.scenes import Scene, render_scene
from vlm_ros.embedded.tasks import make_example

TRAIN_SEED_START = 0  # train scenes: seeds [0, 10_000_000)
EVAL_SEED_START = 10_000_000  # held-out scenes for evaluation start here (disjoint)
log = logging.getLogger("vlm_ros.embedded.train")


def _render_chunk(args: tuple[list[int], int]) -> tuple[np.ndarray, list]:
    seeds, image_size = args
    scenes = [render_scene(s) for s in seeds]
    pix = preprocess_images([s.image for s in scenes], image_size).astype(np.float16)  # (n, 3, S, S)
    light = [(s.objects, s.width, s.height, s.seed, s.intrinsics) for s in scenes]
    return pix, light


def _light_scene(objects, width: int, height: int, seed: int, intrinsics) -> Scene:
    """A Scene without pixels (a zero-memory broadcast image) for question generation."""
    img = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (height, width, 3))
    lab = np.broadcast_to(np.zeros((1, 1), np.int16), (height, width))
    dep = np.broadcast_to(np.zeros((1, 1), np.float32), (height, width))
    return Scene(image=img, depth=dep, labels=lab, intrinsics=intrinsics, objects=objects, seed=seed)


def render_pool(n: int, seed_start: int, image_size: int, workers: int) -> tuple[np.ndarray, list[Scene]]:
    """(N, 3, S, S) float16 pixel values and pixel-less scenes for seeds [seed_start, seed_start + n)."""
    from tqdm import tqdm

    chunk = 50
    jobs = [(list(range(seed_start + i, seed_start + min(i + chunk, n))), image_size) for i in range(0, n, chunk)]
    pix = np.empty((n, 3, image_size, image_size), np.float16)
    scenes: list[Scene] = []
    bar = tqdm(total=n, desc="render", unit="scene", file=sys.stderr, mininterval=5)
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            results = pool.imap(_render_chunk, jobs)
            for p, light in results:
                pix[len(scenes) : len(scenes) + len(p)] = p
                scenes += [_light_scene(*x) for x in light]
                bar.update(len(p))
    else:
        for job in jobs:
            p, light = _render_chunk(job)
            pix[len(scenes) : len(scenes) + len(p)] = p
            scenes += [_light_scene(*x) for x in light]
            bar.update(len(p))
    bar.close()
    return pix, scenes


class Batcher:
    """Random (scene, question) batches as padded tensors; labels -100 except answer tokens and EOS."""

    def __init__(self, tokenizer, pixels: np.ndarray, scenes: list[Scene], num_image_tokens: int, seed: int):
        self.tok = tokenizer
        self.pixels = pixels
        self.scenes = scenes
        self.n_img = num_image_tokens
        self.rng = np.random.default_rng(seed)
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def encode(self, instruction: str, answer: str) -> tuple[list[int], int]:
        """Token ids of prompt + answer + EOS with the image token expanded, and the answer's start index."""
        prompt = self.tok(build_prompt(instruction), add_special_tokens=False).input_ids
        full = self.tok(build_prompt(instruction) + " " + answer, add_special_tokens=False).input_ids
        if full[: len(prompt)] != prompt:
            raise AssertionError(f"prompt tokens are not a prefix: {instruction!r} / {answer!r}")
        assert prompt[0] == self.image_id
        ids = [self.image_id] * self.n_img + full[1:] + [self.eos]
        return ids, self.n_img + len(prompt) - 1

    def batch(self, size: int):
        import torch

        idx = self.rng.integers(len(self.scenes), size=size)
        seqs, starts = [], []
        for i in idx:
            ex = make_example(self.scenes[int(i)], self.rng)
            ids, start = self.encode(ex.instruction, ex.answer)
            seqs.append(ids)
            starts.append(start)
        T = max(len(s) for s in seqs)
        input_ids = torch.full((size, T), self.pad, dtype=torch.long)  # (B, T)
        labels = torch.full((size, T), -100, dtype=torch.long)  # (B, T)
        attn = torch.zeros((size, T), dtype=torch.long)
        for b, (s, st) in enumerate(zip(seqs, starts)):
            input_ids[b, : len(s)] = torch.tensor(s)
            labels[b, st : len(s)] = torch.tensor(s[st:])
            attn[b, : len(s)] = 1
        pixel_values = torch.from_numpy(self.pixels[idx].astype(np.float32))  # (B, 3, S, S)
        return dict(input_ids=input_ids, attention_mask=attn, pixel_values=pixel_values, labels=labels)


def batch_stream(tokenizer, pixels, scenes, num_image_tokens: int, seed: int, batch: int, workers: int):
    """Endless iterator of batches; with workers > 0 they are made in DataLoader worker processes."""
    import torch

    if workers <= 0:
        b = Batcher(tokenizer, pixels, scenes, num_image_tokens, seed)
        while True:
            yield b.batch(batch)

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid = info.id if info is not None else 0
            b = Batcher(tokenizer, pixels, scenes, num_image_tokens, seed * 1000 + wid)
            while True:
                yield b.batch(batch)

    loader = torch.utils.data.DataLoader(
        _Stream(), batch_size=None, num_workers=workers, prefetch_factor=4, persistent_workers=True,
        pin_memory=True, multiprocessing_context="fork",
    )
    yield from loader


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights directory (written when done)")
    ap.add_argument("--steps", type=int, default=8000, help="optimizer steps (may be capped by --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=48.0, help="wall-clock budget for the whole run; 0 = none")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vision-lr-scale", type=float, default=1.0, help="learning rate of the vision tower / --lr")
    ap.add_argument("--pool-cache", type=Path, default=None, help=".npz file to load the pool from / save it to")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--pool", type=int, default=3000, help="number of pre-rendered training scenes")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the pool")
    ap.add_argument("--loader-workers", type=int, default=-1, help="batch-making processes (-1: 0 on CPU, 6 on CUDA)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--config", type=Path, default=None, help="JSON file with EmbeddedConfig fields")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: <out>.train.log beside --out)")
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    t0 = time.monotonic()
    log_path = args.log or args.out.parent / f"{args.out.name}.train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(log_path), logging.StreamHandler(sys.stderr)],
    )
    cfg = EmbeddedConfig.from_dict(json.loads(args.config.read_text())) if args.config else EmbeddedConfig()
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    log.info("args %s, config %s, device %s", vars(args), cfg.to_dict(), device)

    seed_start = TRAIN_SEED_START + args.seed * args.pool
    if args.pool_cache is not None and args.pool_cache.exists():
        import pickle

        with np.load(args.pool_cache, allow_pickle=False) as z:
            pixels = z["pixels"]
        scenes = pickle.loads(args.pool_cache.with_suffix(".pkl").read_bytes())
    else:
        pixels, scenes = render_pool(args.pool, seed_start, cfg.image_size, args.workers)
        if args.pool_cache is not None:
            import pickle

            np.savez(args.pool_cache, pixels=pixels)
            args.pool_cache.with_suffix(".pkl").write_bytes(pickle.dumps(scenes))
    log.info("rendered %d scenes in %.0f s", len(scenes), time.monotonic() - t0)

    model, processor = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters", n_params)
    model.to(device).train()
    groups = []
    for vision in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if ("vision_tower" in n) == vision]
        scale = args.vision_lr_scale if vision else 1.0
        groups.append({"params": [p for n, p in named if p.dim() >= 2], "weight_decay": args.weight_decay, "scale": scale})
        groups.append({"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0, "scale": scale})
    opt = torch.optim.AdamW(
        groups,
        lr=args.lr,
        betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    loader_workers = args.loader_workers if args.loader_workers >= 0 else (6 if device.type == "cuda" else 0)
    stream = batch_stream(
        processor.tokenizer, pixels, scenes, cfg.num_image_tokens, args.seed + 1, args.batch, loader_workers
    )

    total = args.steps
    budget_s = args.minutes * 60.0 if args.minutes > 0 else math.inf
    save_margin_s = 30.0
    timing_from, timing_to = 10, 60  # steps timed to size the run (after warm-up of loaders and kernels)
    t_timing = 0.0
    marks: list[tuple[int, float]] = []  # (step, time) every 50 steps: the speed over the last 200 steps
    losses: list[float] = []
    bar = tqdm(total=total, desc="train", unit="step", file=sys.stderr, mininterval=10)
    t_train = time.monotonic()
    step = 0
    while step < total:
        if step == timing_from:
            t_timing = time.monotonic()
        if step >= timing_to and step % 50 == 0 and math.isfinite(budget_s):
            # re-plan the step count from the recent speed (other work on the machine changes it)
            marks.append((step, time.monotonic()))
            (s0, ts0), (s1, ts1) = marks[max(0, len(marks) - 5)], marks[-1]
            per_step = (ts1 - ts0) / (s1 - s0) if s1 > s0 else (ts1 - t_timing) / (step - timing_from)
            left = budget_s - (time.monotonic() - t0) - save_margin_s
            new_total = min(args.steps, step + max(1, int(left / per_step)))
            if new_total != total:
                log.info("%.3f s/step: planning %d steps to fit %.1f min", per_step, new_total, args.minutes)
                total = new_total
                bar.total = total
        lr = lr_at(step, total, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        batch = {k: v.to(device, non_blocking=True) for k, v in next(stream).items()}
        out = model(**batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == total:
            recent = float(np.mean(losses[-50:]))
            bar.set_postfix(loss=f"{recent:.3f}", lr=f"{lr:.2e}")
            log.info("step %d/%d loss %.4f lr %.2e elapsed %.0f s", step, total, recent, lr, time.monotonic() - t0)
        if time.monotonic() - t0 > budget_s:
            log.info("budget reached at step %d: stopping", step)
            break
    bar.close()

    train_s = time.monotonic() - t_train
    final_loss = float(np.mean(losses[-50:]))
    model.to("cpu").eval()
    facts = {
        "train": {
            "command": "python -m vlm_ros.embedded.train " + " ".join(argv if argv is not None else sys.argv[1:]),
            "args": {k: str(v) for k, v in vars(args).items()},
            "steps": step,
            "planned_steps": total,
            "final_loss": final_loss,
            "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.monotonic() - t0, 1),
            "device": str(device),
            "parameters": n_params,
            "train_seeds": [TRAIN_SEED_START + args.seed * args.pool, TRAIN_SEED_START + (args.seed + 1) * args.pool],
        }
    }
    # write to a temporary directory beside the target, then swap it in
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    save(model, processor, tmp, cfg, facts)
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    log.info("saved to %s after %d steps, final loss %.4f, wall %.0f s", args.out, step, final_loss, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
