"""Train the embedded model on rendered scenes: `python -m vlm_ros.embedded.train [--out DIR] [--steps N] ...`.

Data: a pool of scenes rendered from the train seed range (pixel values pre-computed at model resolution, and
dense per-patch targets), as many questions per image as fit in a sequence of --seq-tokens, fewer objects per
scene early on (curriculum). Loss: answer tokens (+ EOS) with soft location targets, plus the dense auxiliary loss of
`Objective`. AdamW, linear warmup, cosine decay over --steps. --minutes is a budget for the whole run (rendering
included): only when the measured speed says --steps will not fit is the step count re-planned down (the
schedule then changes, so such a run is not comparable); the step count actually used is logged and saved.
On a CPU with bf16 matrix instructions (AMX, AVX512-BF16) the step runs under bf16 autocast, and on a CPU with a
C++ compiler the transformer layers are compiled (torch.compile fuses their element-wise work). The defaults
(5,000 steps, 57 min budget) took 45-50 min on a 2-core CPU with AMX (bf16) and 56 min on one without (fp32).
TRAINING.md has the recipe and the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from vlm_ros.embedded.build import build_model, preprocess_images, save
from vlm_ros.embedded.model import DEFAULT_WEIGHTS_DIR, EmbeddedConfig, load
from vlm_ros.embedded.prompt import ANSWER_MARKER, IMAGE, build_prompt
from vlm_ros.embedded.scenes import COLORS, MAX_OBJECTS, SHAPES, SIZES, Scene, render_scene
from vlm_ros.embedded.tasks import make_example

TRAIN_SEED_START = 0  # train scenes: seeds [0, 10_000_000)
EVAL_SEED_START = 10_000_000  # held-out scenes for evaluation start here (disjoint)
PAD_MULTIPLE = 32  # batches are padded to a multiple of this many tokens: few distinct shapes for the CPU kernels
log = logging.getLogger("vlm_ros.embedded.train")


def patch_targets(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense targets of the auxiliary loss for one scene, per image patch in row-major order.

    classes (grid*grid, 3) int8: colour, shape and size index + 1 of the object covering most of the patch
    (at least a quarter of it), 0 for background; boxes (grid*grid, 4) float16: that object's box
    normalised to [0, 1] (zeros for background).
    """
    h, w = scene.labels.shape
    rows = np.minimum(np.arange(h) * grid // h, grid - 1)
    cols = np.minimum(np.arange(w) * grid // w, grid - 1)
    cell = (rows[:, None] * grid + cols[None, :]).ravel()
    n_obj = len(scene.objects)
    counts = np.bincount(cell * (n_obj + 1) + scene.labels.ravel() + 1, minlength=grid * grid * (n_obj + 1))
    counts = counts.reshape(grid * grid, n_obj + 1)[:, 1:]  # (cells, objects): pixels of each object
    classes = np.zeros((grid * grid, 3), np.int8)
    boxes = np.zeros((grid * grid, 4), np.float16)
    if n_obj:
        best = counts.argmax(1)
        covered = counts[np.arange(grid * grid), best] >= 0.25 * (h / grid) * (w / grid)
        for c in np.flatnonzero(covered):
            o = scene.objects[int(best[c])]
            classes[c] = (COLORS.index(o.color) + 1, SHAPES.index(o.shape) + 1, SIZES.index(o.size) + 1)
            boxes[c] = (o.box.x_min / w, o.box.y_min / h, o.box.x_max / w, o.box.y_max / h)
    return classes, boxes


def is_partial(seed: int, fraction: float) -> bool:
    """Whether the training scene of `seed` is rendered partial (objects cut by the border, mostly hidden)."""
    return seed % 100 < round(100 * fraction)


def _render_chunk(args: tuple[list[int], int, int, float]) -> tuple[np.ndarray, list, np.ndarray, np.ndarray]:
    seeds, image_size, grid, partial = args
    scenes = [render_scene(s, partial=is_partial(s, partial)) for s in seeds]
    pix = preprocess_images([s.image for s in scenes], image_size).astype(np.float16)  # (n, 3, S, S)
    light = [(s.objects, s.width, s.height, s.seed, s.intrinsics) for s in scenes]
    dense = [patch_targets(s, grid) for s in scenes]
    return pix, light, np.stack([d[0] for d in dense]), np.stack([d[1] for d in dense])


def _light_scene(objects, width: int, height: int, seed: int, intrinsics) -> Scene:
    """A Scene without pixels (a zero-memory broadcast image) for question generation."""
    img = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (height, width, 3))
    lab = np.broadcast_to(np.zeros((1, 1), np.int16), (height, width))
    dep = np.broadcast_to(np.zeros((1, 1), np.float32), (height, width))
    return Scene(image=img, depth=dep, labels=lab, intrinsics=intrinsics, objects=objects, seed=seed)


@dataclass
class Pool:
    """Pre-rendered training scenes: pixel values, pixel-less scenes, dense patch targets."""

    seed_start: int  # the scenes of seeds [seed_start, seed_start + N)
    pixels: np.ndarray  # (N, 3, S, S) float16
    scenes: list[Scene]
    patch_classes: np.ndarray  # (N, P, 3) int8, see patch_targets
    patch_boxes: np.ndarray  # (N, P, 4) float16
    partial: float = 0.0  # the fraction of partial scenes (see is_partial)

    def __getstate__(self) -> dict:
        # pickled without the scenes' zero-memory images, which pickle would write out in full (2.7 MB each)
        light = [(s.objects, s.width, s.height, s.seed, s.intrinsics) for s in self.scenes]
        return {**self.__dict__, "scenes": light}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, scenes=[_light_scene(*x) for x in state["scenes"]])


def render_pool(n: int, seed_start: int, image_size: int, grid: int, workers: int, partial: float = 0.0) -> Pool:
    """The scenes of seeds [seed_start, seed_start + n), rendered with `workers` processes (1 or less: in this one)."""
    from tqdm import tqdm

    chunk = 50
    jobs = [
        (list(range(seed_start + i, seed_start + min(i + chunk, n))), image_size, grid, partial)
        for i in range(0, n, chunk)
    ]
    pool = Pool(
        seed_start=seed_start,
        pixels=np.empty((n, 3, image_size, image_size), np.float16),
        scenes=[],
        patch_classes=np.empty((n, grid * grid, 3), np.int8),
        patch_boxes=np.empty((n, grid * grid, 4), np.float16),
        partial=partial,
    )
    bar = tqdm(total=n, desc="render", unit="scene", file=sys.stderr, mininterval=5)
    with ExitStack() as stack:  # one worker: rendered here (forking a process that runs threads may deadlock)
        chunks = map(_render_chunk, jobs) if workers <= 1 else \
            stack.enter_context(get_context("fork").Pool(workers)).imap(_render_chunk, jobs)
        for pix, light, classes, boxes in chunks:
            at = slice(len(pool.scenes), len(pool.scenes) + len(pix))
            pool.pixels[at], pool.patch_classes[at], pool.patch_boxes[at] = pix, classes, boxes
            pool.scenes += [_light_scene(*x) for x in light]
            bar.update(len(pix))
    bar.close()
    return pool


class Batcher:
    """Random (scene, question) batches as padded tensors; labels -100 except answer tokens and EOS."""

    def __init__(self, tokenizer, pool: Pool, num_image_tokens: int, seed: int):
        self._encode = tokenizer.backend_tokenizer.encode  # the Rust tokenizer: its Python wrapper cost half a batch
        self._prompt_ids: dict[str, list[int]] = {}  # instructions repeat (templates x attributes), answers less
        self.pool = pool
        self.scenes = pool.scenes
        counts = np.array([len(sc.objects) for sc in pool.scenes])
        self.up_to = {n: np.flatnonzero(counts <= n) for n in range(int(counts.max(initial=0)) + 1)}
        self.n_img = num_image_tokens
        self.rng = np.random.default_rng(seed)
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def encode(self, turns: list[tuple[str, str]]) -> tuple[list[int], list[bool]]:
        """Token ids of the image and the (instruction, answer) turns, and which ids are supervised.

        The first turn is exactly the inference prompt (`build_prompt`); later turns on the same image follow
        as "instruction answer: answer</s>", so one image encoding serves several supervised answers.
        """
        ids, supervised = [self.image_id] * self.n_img, [False] * self.n_img
        for k, (instruction, answer) in enumerate(turns):
            turn_ids, turn_supervised = self._turn(k, instruction, answer)
            ids += turn_ids
            supervised += turn_supervised
        return ids, supervised

    @staticmethod
    def turn_prompt(k: int, instruction: str) -> str:
        """The text before the answer of turn k: the inference prompt first, "instruction answer:" after."""
        return build_prompt(instruction) if k == 0 else instruction.strip() + ANSWER_MARKER

    def _turn(self, k: int, instruction: str, answer: str) -> tuple[list[int], list[bool]]:
        prompt_text = self.turn_prompt(k, instruction)
        prompt = self._prompt_ids.get(prompt_text)
        if prompt is None:
            prompt = self._encode(prompt_text, add_special_tokens=False).ids
            if len(self._prompt_ids) < 50_000:
                self._prompt_ids[prompt_text] = prompt
        if k == 0:
            assert prompt[0] == self.image_id
            prompt = prompt[1:]
        # The word-level tokenizer never joins text across a space, so "prompt answer" tokenizes as the prompt's
        # tokens followed by the answer's (a unit test checks this against tokenizing the whole turn).
        answer_ids = self._encode(answer, add_special_tokens=False).ids
        return prompt + answer_ids + [self.eos], [False] * len(prompt) + [True] * (len(answer_ids) + 1)

    def sequence(self, scene: Scene, turns: int, max_tokens: int = 0) -> tuple[list[int], list[bool]]:
        """`encode` of `turns` questions on `scene`; with `max_tokens`, of as many of them as fit in that many
        tokens (at least one): short answers then share an image with more questions, and a batch holds
        fewer pad tokens."""
        ids, supervised = [self.image_id] * self.n_img, [False] * self.n_img
        for k in range(turns):
            ex = make_example(scene, self.rng)
            turn_ids, turn_supervised = self._turn(k, ex.instruction, ex.answer)
            if k and max_tokens and len(ids) + len(turn_ids) > max_tokens:
                break
            ids += turn_ids
            supervised += turn_supervised
        return ids, supervised

    def batch(self, size: int, turns: int = 1, max_objects: int | None = None, max_tokens: int = 0):
        """A batch of `size` sequences of up to `turns` questions (see `sequence`) on scenes with at most
        `max_objects` objects."""
        import torch

        allowed = self.up_to.get(max_objects) if max_objects is not None else None
        if allowed is None or len(allowed) == 0:
            idx = self.rng.integers(len(self.scenes), size=size)
        else:
            idx = allowed[self.rng.integers(len(allowed), size=size)]
        seqs = [self.sequence(self.scenes[int(i)], turns, max_tokens) for i in idx]
        T = -(-max(len(ids) for ids, _ in seqs) // PAD_MULTIPLE) * PAD_MULTIPLE
        input_ids = torch.full((size, T), self.pad, dtype=torch.long)  # (B, T)
        labels = torch.full((size, T), -100, dtype=torch.long)  # (B, T)
        attn = torch.zeros((size, T), dtype=torch.long)
        for b, (ids, supervised) in enumerate(seqs):
            row = torch.tensor(ids)
            input_ids[b, : len(ids)] = row
            labels[b, : len(ids)] = torch.where(torch.tensor(supervised), row, -100)
            attn[b, : len(ids)] = 1
        return dict(
            input_ids=input_ids,
            attention_mask=attn,
            labels=labels,
            pixel_values=torch.from_numpy(self.pool.pixels[idx].astype(np.float32)),  # (B, 3, S, S)
            patch_classes=torch.from_numpy(self.pool.patch_classes[idx].astype(np.int64)),  # (B, P, 3)
            patch_boxes=torch.from_numpy(self.pool.patch_boxes[idx].astype(np.float32)),  # (B, P, 4)
        )


def curriculum_max_objects(step: int, total: int, ramp: float) -> int | None:
    """Most objects per training scene at `step`: 1 at the start, +1 per equal part of the first `ramp` of the
    run, then no limit. Reading one object off the image is learnt first, picking one out of several after."""
    if ramp <= 0 or step >= ramp * total:
        return None
    return 1 + int(step / (ramp * total) * MAX_OBJECTS)


def batch_stream(
    tokenizer, pool: Pool, num_image_tokens: int, seed: int, batch: int, turns: int, workers: int,
    max_objects: Callable[[], int | None] = lambda: None, max_tokens: int = 0,
):
    """Endless iterator of batches; with workers > 0 they are made in DataLoader worker processes."""
    import torch

    if workers <= 0:
        b = Batcher(tokenizer, pool, num_image_tokens, seed)
        while True:
            yield b.batch(batch, turns, max_objects(), max_tokens)

    def current() -> int:
        n = max_objects()
        return -1 if n is None else n

    context = get_context("fork")
    limit = context.Value("i", current(), lock=False)  # the curriculum's limit, shared with the workers (-1: none)

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid = info.id if info is not None else 0
            b = Batcher(tokenizer, pool, num_image_tokens, seed * 1000 + wid)
            while True:
                yield b.batch(batch, turns, limit.value if limit.value >= 0 else None, max_tokens)

    loader = torch.utils.data.DataLoader(
        _Stream(), batch_size=None, num_workers=workers, prefetch_factor=4, persistent_workers=True, timeout=600,
        pin_memory=torch.cuda.is_available(), multiprocessing_context=context,
    )
    for item in loader:  # batches run a few ahead of the step: the limit lags by at most workers * prefetch
        yield item
        limit.value = current()


class Objective:
    """The training loss: next-token cross-entropy on the answer, plus two aids that only shape training.

    - Location tokens get a soft target as well: half the weight on the true bin, half on a Gaussian over the
      neighbouring bins (`loc_sigma` bins wide), so a box one bin off is a smaller error than one far off.
    - A dense auxiliary loss on the image tokens entering the decoder (the projector output): per patch, the
      colour, shape and size of the object covering it and that object's normalised box. Its linear head is
      not part of the saved model; it gives the vision pathway a direct signal from the first step.
    With `per_answer`, every answer weighs the same whatever its length: a one-word colour answer counts as much
    as a 30-token object list (averaged per token, the lists and descriptions take most of the gradient).
    """

    def __init__(self, model, hidden: int, loc_first_id: int, loc_bins: int, loc_sigma: float, aux_weight: float,
                 per_answer: bool = False):
        import torch

        self.model = model
        self.loc_first, self.loc_bins, self.loc_sigma = loc_first_id, loc_bins, loc_sigma
        self.aux_weight = aux_weight
        self.per_answer = per_answer
        self.head = torch.nn.Linear(hidden, len(COLORS) + len(SHAPES) + len(SIZES) + 3 + 4)
        self.splits = (len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1, 4)
        self._features = None
        model.model.multi_modal_projector.register_forward_hook(lambda _m, _i, out: setattr(self, "_features", out))

    def parameters(self):
        return self.head.parameters()

    def to(self, device):
        self.head.to(device)
        return self

    def __call__(self, batch: dict) -> tuple:
        """(total loss, {part: float}) for one batch from Batcher."""
        import torch
        import torch.nn.functional as F

        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"], use_cache=False)  # no KV cache to fill in training
        logits = out.logits[:, :-1].float()
        target = batch["labels"][:, 1:]
        keep = target != -100
        logp = F.log_softmax(logits[keep], dim=-1)  # (N, V)
        t = target[keep]
        hard = -logp.gather(1, t[:, None])[:, 0]
        loc = t - self.loc_first
        is_loc = (loc >= 0) & (loc < self.loc_bins)
        bins = torch.arange(self.loc_bins, device=t.device, dtype=torch.float32)
        soft_target = torch.softmax(-((bins[None] - loc[:, None].float()) ** 2) / (2 * self.loc_sigma**2), dim=-1)
        soft = -(soft_target * logp[:, self.loc_first : self.loc_first + self.loc_bins]).sum(-1)
        per_token = torch.where(is_loc, 0.5 * hard + 0.5 * soft, hard)
        token_loss = answer_mean(per_token, keep) if self.per_answer else per_token.mean()

        feats = self._features  # (B, P, hidden)
        colour, shape, size, box = self.head(feats.float()).split(self.splits, dim=-1)
        classes, boxes = batch["patch_classes"], batch["patch_boxes"]
        on_object = classes[..., 0] > 0
        aux = sum(F.cross_entropy(x.flatten(0, 1), classes[..., i].flatten())
                  for i, x in enumerate((colour, shape, size)))
        if bool(on_object.any()):
            aux = aux + 5.0 * F.l1_loss(box.sigmoid()[on_object], boxes[on_object])
        total = token_loss + self.aux_weight * aux
        return total, {"tokens": float(token_loss.detach()), "aux": float(aux.detach()),
                       "answer_ce": float(hard.mean().detach())}


def answer_mean(per_token, supervised):
    """Mean over answers of each answer's mean token loss.

    `supervised` (B, T) marks the positions of `per_token` (N,), in row-major order; an answer is a run of
    consecutive supervised positions in a row (turns are separated by their unsupervised questions).
    """
    import torch
    import torch.nn.functional as F

    starts = supervised & ~F.pad(supervised[:, :-1], (1, 0), value=False)
    answer = (torch.cumsum(starts.flatten(), 0) - 1)[supervised.flatten()]  # answer index of each position
    length = torch.bincount(answer)
    return (per_token / length[answer]).sum() / length.numel()


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private; absent in some torch versions
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would build its kernels with, if any."""
    return next(filter(None, (shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++") if c)), None)


def compile_layers(model) -> int:
    """torch.compile each transformer layer in place (the weights and what `save` writes are unchanged).

    Per layer, not the whole model: the loss and the image-token merge have data-dependent shapes that make
    whole-model graphs break and recompile. Layers see few shapes (batches are padded to PAD_MULTIPLE).
    """
    layers = [*model.model.vision_tower.encoder.layers, *model.model.language_model.layers]
    for layer in layers:
        layer.compile(dynamic=False)
    return len(layers)


def default_lr(batch: int) -> float:
    """Peak learning rate for a batch size: 2e-3 at 128 (the GPU runs), scaled by the square root of the batch.
    At the CPU's batch of 32 that gives 1e-3, the best of 5e-4 / 1e-3 / 2e-3 / 4e-3 in 1,200-step pilots."""
    return 2e-3 * math.sqrt(batch / 128)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights directory (written when done)")
    ap.add_argument("--steps", type=int, default=5000, help="optimizer steps (re-planned down only if --minutes "
                    "would be exceeded); 0: only render the pool (into --pool-cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=57.0, help="wall-clock budget for the whole run; 0 = none")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default: 2e-3 at batch 128, times sqrt(batch / 128): 1e-3 at batch 32)")
    ap.add_argument("--vision-lr-scale", type=float, default=1.0, help="learning rate of the vision tower / --lr")
    ap.add_argument("--pool-cache", type=Path, default=None,
                    help="pickle file to load the rendered pool from / save it to")
    ap.add_argument("--turns", type=int, default=8, help="most questions per image in one training sequence")
    ap.add_argument("--seq-tokens", type=int, default=160,
                    help="a sequence takes further questions only while it stays within this many tokens "
                         "(0: always --turns)")
    ap.add_argument("--curriculum", type=float, default=0.3,
                    help="fraction of the run over which the objects per scene ramp from 1 to all (0: off)")
    ap.add_argument("--loc-sigma", type=float, default=1.0, help="width in bins of the soft location target")
    ap.add_argument("--aux-weight", type=float, default=0.5, help="weight of the dense patch loss (0: off)")
    ap.add_argument("--loss-weighting", choices=("token", "answer"), default="token",
                    help="average the answer loss per token, or per answer (each answer weighs the same)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--pool", type=int, default=4000, help="number of pre-rendered training scenes")
    ap.add_argument("--partial", type=float, default=0.0,
                    help="fraction of the scenes rendered partial: objects cut by the image's sides or mostly hidden")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the pool")
    ap.add_argument("--loader-workers", type=int, default=-1, help="batch-making processes (-1: 0 on CPU, 6 on CUDA)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="bf16: autocast (auto: on a CPU with bf16 matrix instructions, e.g. AMX; fp32 + TF32 on CUDA)")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="torch.compile the vision and decoder layers (auto: on a CPU with a C++ compiler)")
    ap.add_argument("--config", type=Path, default=None, help="JSON file with EmbeddedConfig fields")
    ap.add_argument("--init", type=Path, default=None, help="fine-tune: start from the weights in this directory")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: <out>.train.log beside --out)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    log_path = args.log or args.out.parent / f"{args.out.name}.train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(log_path), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _train(args, argv, t0)
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


def _train(args: argparse.Namespace, argv: list[str] | None, t0: float) -> int:
    import torch
    from tqdm import tqdm

    cfg = EmbeddedConfig.from_dict(json.loads(args.config.read_text())) if args.config else EmbeddedConfig()
    if args.seq_tokens > cfg.max_positions:
        raise SystemExit(f"--seq-tokens {args.seq_tokens} exceeds the model's {cfg.max_positions} positions")
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available()) else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(args.seed)
    if args.lr is None:
        args.lr = default_lr(args.batch)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cpu" and cpu_has_bf16_matmul())
    log.info("args %s, config %s, device %s, %s", vars(args), cfg.to_dict(), device,
             "bf16 autocast" if bf16 else "fp32")

    seed_start = TRAIN_SEED_START + args.seed * args.pool
    grid = cfg.image_size // cfg.patch_size
    if args.pool_cache is not None and args.pool_cache.exists():
        pool = pickle.loads(args.pool_cache.read_bytes())  # its own seeds: --seed then sets only init and order
        if pool.pixels.shape[-1] != cfg.image_size or pool.patch_classes.shape[1] != grid * grid:
            raise SystemExit(f"{args.pool_cache} holds {pool.pixels.shape[-1]}-px images with "
                             f"{pool.patch_classes.shape[1]} patches; "
                             f"this config needs {cfg.image_size} and {grid * grid}")
        if pool.partial != args.partial:
            raise SystemExit(f"{args.pool_cache} holds a pool with --partial {pool.partial}, not {args.partial}")
    else:
        pool = render_pool(args.pool, seed_start, cfg.image_size, grid, args.workers, args.partial)
        if args.pool_cache is not None:
            args.pool_cache.write_bytes(pickle.dumps(pool, protocol=pickle.HIGHEST_PROTOCOL))
    log.info("rendered %d scenes in %.0f s", len(pool.scenes), time.monotonic() - t0)
    if args.steps == 0:
        return 0

    model, processor = build_model(cfg)
    if args.init is not None:  # fine-tune: start from a trained model of the same config
        init_cfg = json.loads((args.init / "embedded_config.json").read_text())["config"]
        if EmbeddedConfig.from_dict(init_cfg) != cfg:
            raise SystemExit(f"--init {args.init} has another EmbeddedConfig than this run's")
        model.load_state_dict(load(args.init)[0].state_dict())
        log.info("initialised from %s", args.init)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters", n_params)
    model.to(device).train()
    saved_attention = model.config._attn_implementation
    if bf16 and device.type == "cpu":
        model.set_attn_implementation("eager")  # SDPA's bf16 backward on the CPU took 3x the whole fp32 step
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cpu" and cxx_compiler() is not None)
    if compiled:
        log.info("torch.compile: %d layers (the first steps of each sequence length compile)", compile_layers(model))
    objective = Objective(
        model, cfg.text_hidden, processor.tokenizer.convert_tokens_to_ids("<loc_0>"), cfg.loc_bins,
        args.loc_sigma, args.aux_weight, per_answer=args.loss_weighting == "answer",
    ).to(device)
    groups = [{"params": list(objective.parameters()), "weight_decay": 0.0, "scale": 1.0}]
    for vision in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if ("vision_tower" in n) == vision]
        scale = args.vision_lr_scale if vision else 1.0
        groups.append({"params": [p for n, p in named if p.dim() >= 2], "weight_decay": args.weight_decay,
                       "scale": scale})
        groups.append({"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0, "scale": scale})
    opt = torch.optim.AdamW(
        groups,
        lr=args.lr,
        betas=(0.9, 0.98),
        fused=device.type == "cuda",
    )
    loader_workers = args.loader_workers if args.loader_workers >= 0 else (6 if device.type == "cuda" else 0)
    stream = batch_stream(
        processor.tokenizer, pool, cfg.num_image_tokens, args.seed + 1, args.batch, args.turns, loader_workers,
        max_objects=lambda: curriculum_max_objects(step, total, args.curriculum), max_tokens=args.seq_tokens,
    )

    total = args.steps
    budget_s = args.minutes * 60.0 if args.minutes > 0 else math.inf
    save_margin_s = 30.0
    timing_from, timing_to = 10, 60  # steps timed to size the run (after warm-up of loaders and kernels)
    t_timing = 0.0
    marks: list[tuple[int, float]] = []  # (step, time) every 50 steps: the speed over the last 200 steps
    losses: list[float] = []  # answer cross-entropy (the model's own loss), per step
    aux_losses: list[float] = []
    bar = tqdm(total=total, desc="train", unit="step", file=sys.stderr, mininterval=10)
    t_train = time.monotonic()
    t_logged, data_wait_s = t_train, 0.0  # time spent waiting for batches since the last log line
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
        t_wait = time.monotonic()
        batch = next(stream)
        data_wait_s += time.monotonic() - t_wait
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, parts = objective(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(parts["answer_ce"])
        aux_losses.append(parts["aux"])
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == total:
            recent = float(np.mean(losses[-50:]))
            bar.set_postfix(loss=f"{recent:.3f}", lr=f"{lr:.2e}")
            now = time.monotonic()
            log.info(
                "step %d/%d loss %.4f aux %.3f lr %.2e elapsed %.0f s data wait %.0f%%",
                step, total, recent, float(np.mean(aux_losses[-50:])), lr, now - t0,
                100.0 * data_wait_s / max(now - t_logged, 1e-9),
            )
            t_logged, data_wait_s = now, 0.0
        if time.monotonic() - t0 > budget_s:
            log.info("budget reached at step %d: stopping", step)
            break
    bar.close()

    train_s = time.monotonic() - t_train
    final_loss = float(np.mean(losses[-50:]))
    model.to("cpu").eval()
    model.set_attn_implementation(saved_attention)
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
            "precision": "bf16 autocast" if bf16 else "fp32",
            "compiled": compiled,
            "parameters": n_params,
            "train_seeds": [pool.seed_start, pool.seed_start + len(pool.scenes)],
        }
    }
    # write to a temporary directory beside the target, then swap it in
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    save(model, processor, tmp, cfg, facts)
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    log.info("saved to %s after %d steps, final loss %.4f, wall %.0f s", args.out, step, final_loss,
             time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
