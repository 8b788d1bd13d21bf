"""The training recipe of the embedded model: dense patch targets, multi-turn sequences, the loss, one short run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_embedded_model import TINY

from vlm_ros.embedded.build import build_model, build_tokenizer
from vlm_ros.embedded.model import load
from vlm_ros.embedded.scenes import COLORS, SHAPES, render_scene
from vlm_ros.embedded.tasks import make_example
from vlm_ros.embedded.train import (
    PAD_MULTIPLE,
    Batcher,
    Objective,
    compile_layers,
    cxx_compiler,
    is_partial,
    main,
    patch_targets,
    render_pool,
)


@pytest.fixture(scope="module")
def pool():
    return render_pool(6, 0, TINY.image_size, TINY.image_size // TINY.patch_size, workers=1)


def test_patch_targets_name_the_object_under_each_patch():
    scene = render_scene(3)
    grid = 8
    classes, boxes = patch_targets(scene, grid)
    assert classes.shape == (grid * grid, 3) and boxes.shape == (grid * grid, 4)
    h, w = scene.labels.shape
    for c in np.flatnonzero(classes[:, 0]):
        r, col = divmod(int(c), grid)
        cell = scene.labels[r * h // grid : (r + 1) * h // grid, col * w // grid : (col + 1) * w // grid]
        owner = np.bincount(cell[cell >= 0].ravel()).argmax()
        o = scene.objects[owner]
        assert (COLORS[classes[c, 0] - 1], SHAPES[classes[c, 1] - 1]) == (o.color, o.shape)
        assert np.allclose(boxes[c], [o.box.x_min / w, o.box.y_min / h, o.box.x_max / w, o.box.y_max / h], atol=1e-3)
    # every object covering a whole patch is named somewhere
    assert {o.label for o in scene.objects if o.box.width > 2 * w / grid and o.box.height > 2 * h / grid} <= {
        f"{COLORS[a - 1]} {SHAPES[b - 1]}" for a, b, _ in classes[classes[:, 0] > 0]
    }


def test_multi_turn_sequence_supervises_only_the_answers(pool):
    tok = build_tokenizer()
    batcher = Batcher(tok, pool, TINY.num_image_tokens, seed=0)
    ids, supervised = batcher.encode([("how many balls are there?", "2"), ("is there a red cube?", "no")])
    assert ids[: TINY.num_image_tokens] == [tok.convert_tokens_to_ids("<image>")] * TINY.num_image_tokens
    text = tok.decode(ids[TINY.num_image_tokens :])
    assert text == "how many balls are there? answer: 2</s> is there a red cube? answer: no</s>"
    assert tok.decode([i for i, s in zip(ids, supervised, strict=True) if s]) == "2</s> no</s>"
    # the first turn is exactly the inference prompt
    prompt = tok("<image>how many balls are there? answer:", add_special_tokens=False).input_ids
    first_answer = supervised.index(True)
    assert ids[TINY.num_image_tokens : first_answer] == prompt[1:]

    batch = batcher.batch(4, turns=3)
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["pixel_values"].shape == (4, 3, TINY.image_size, TINY.image_size)
    assert batch["patch_classes"].shape == (4, TINY.num_image_tokens, 3)
    assert int((batch["labels"] == tok.eos_token_id).sum()) == 4 * 3
    assert batch["input_ids"].shape[1] % PAD_MULTIPLE == 0


def test_turn_tokens_equal_tokenizing_the_whole_turn(pool):
    """Batcher tokenizes prompt and answer apart (and caches prompts); that must equal tokenizing the turn whole."""
    from vlm_ros.embedded.tasks import KINDS

    tok = build_tokenizer()
    batcher = Batcher(tok, pool, TINY.num_image_tokens, seed=4)
    rng = np.random.default_rng(4)
    checked = 0
    for seed in range(40):
        scene = render_scene(seed)
        for kind in KINDS:
            try:
                ex = make_example(scene, rng, kind)
            except ValueError:  # no question of this kind applies to the scene
                continue
            for k in (0, 1):
                prompt_text = Batcher.turn_prompt(k, ex.instruction)
                prompt = tok(prompt_text, add_special_tokens=False).input_ids
                whole = tok(prompt_text + " " + ex.answer, add_special_tokens=False).input_ids
                if k == 0:
                    prompt, whole = prompt[1:], whole[1:]  # the image token: the image tokens stand before
                ids, supervised = batcher._turn(k, ex.instruction, ex.answer)
                assert ids == whole + [tok.eos_token_id], (ex, k)
                assert supervised == [False] * len(prompt) + [True] * (len(whole) - len(prompt) + 1), (ex, k)
                checked += 1
    assert checked > 500


def test_token_budget_packs_more_questions_into_short_sequences(pool):
    tok = build_tokenizer()
    eos = tok.eos_token_id
    budget = TINY.num_image_tokens + 60
    batcher = Batcher(tok, pool, TINY.num_image_tokens, seed=2)
    turns = []
    for scene in pool.scenes:
        for _ in range(20):
            ids, supervised = batcher.sequence(scene, 8, budget)
            turns.append(ids.count(eos))
            assert len(ids) <= budget or turns[-1] == 1  # a first turn longer than the budget stays alone
    assert min(turns) >= 1 and max(turns) > 3 and np.mean(turns) > 2, (min(turns), max(turns), np.mean(turns))

    # without a budget: exactly `turns` questions, the same ones `encode` makes from the same random draws
    a, b = Batcher(tok, pool, TINY.num_image_tokens, seed=3), Batcher(tok, pool, TINY.num_image_tokens, seed=3)
    scene = pool.scenes[0]
    examples = [make_example(scene, b.rng) for _ in range(3)]
    assert a.sequence(scene, 3) == b.encode([(e.instruction, e.answer) for e in examples])


def test_objective_soft_location_target_prefers_near_bins(pool):
    torch.manual_seed(0)
    model, processor = build_model(TINY)
    loc0 = processor.tokenizer.convert_tokens_to_ids("<loc_0>")
    objective = Objective(model, TINY.text_hidden, loc0, TINY.loc_bins, loc_sigma=1.0, aux_weight=0.5)
    batch = Batcher(processor.tokenizer, pool, TINY.num_image_tokens, seed=1).batch(4, turns=2)
    loss, parts = objective(batch)
    assert torch.isfinite(loss) and loss.requires_grad and set(parts) == {"tokens", "aux", "answer_ce"}
    loss.backward()
    assert objective.head.weight.grad is not None and model.model.multi_modal_projector.linear_1.weight.grad is not None
    objective.per_answer = True
    per_answer_loss, _ = objective(batch)
    assert torch.isfinite(per_answer_loss) and float(per_answer_loss) != float(loss)


@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_layers_give_the_eager_loss_and_gradients(pool):
    """--compile changes how the layers run, not what they compute (fp32 here, so the match is tight)."""
    import copy

    torch.manual_seed(0)
    eager_model, processor = build_model(TINY)
    compiled_model = copy.deepcopy(eager_model)
    assert compile_layers(compiled_model) == TINY.vision_layers + TINY.text_layers
    batch = Batcher(processor.tokenizer, pool, TINY.num_image_tokens, seed=1).batch(4, turns=2)
    results = []
    for model in (eager_model, compiled_model):
        torch.manual_seed(1)  # the same auxiliary head
        loss, _ = Objective(model, TINY.text_hidden, processor.tokenizer.convert_tokens_to_ids("<loc_0>"),
                            TINY.loc_bins, loc_sigma=1.0, aux_weight=0.5)(batch)
        loss.backward()
        results.append((float(loss), model.model.language_model.layers[0].mlp.up_proj.weight.grad.clone()))
    (eager_loss, eager_grad), (compiled_loss, compiled_grad) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert torch.allclose(compiled_grad, eager_grad, rtol=1e-3, atol=1e-6)
    assert compiled_model.state_dict().keys() == eager_model.state_dict().keys()  # saved exactly as before


def test_answer_mean_weighs_every_answer_the_same():
    from vlm_ros.embedded.train import answer_mean

    supervised = torch.tensor([[False, True, True, True, False, True],    # answers [1, 2, 3] and [4]
                               [True, False, False, True, True, False]])  # answers [5] and [6, 7]
    per_token = torch.arange(1.0, 8.0)
    assert float(answer_mean(per_token, supervised)) == (2.0 + 4.0 + 5.0 + 6.5) / 4
    assert float(per_token.mean()) == 4.0  # per token, the 3-token answer would count three times


def test_short_training_run_saves_a_loadable_model(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "weights"
    rc = main(["--out", str(out), "--steps", "3", "--minutes", "0", "--pool", "4", "--workers", "1",
               "--batch", "2", "--turns", "2", "--config", str(cfg), "--device", "cpu"])
    assert rc == 0
    model, processor = load(out)
    facts = json.loads((out / "embedded_config.json").read_text())
    assert facts["train"]["steps"] == 3 and facts["config"] == TINY.to_dict()
    assert float(facts["train"]["args"]["lr"]) == 2e-3 * (2 / 128) ** 0.5  # no --lr: scaled to the batch of 2
    assert facts["train"]["compiled"] == (cxx_compiler() is not None)  # --compile auto, on the CPU
    assert (tmp_path / "weights.train.log").read_text().count("step 3/3") == 1
    assert not any(n.startswith("head") for n in model.state_dict())  # the auxiliary head is not saved


def test_fine_tuning_starts_from_the_given_weights_and_refuses_another_config(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY.to_dict()))
    common = ["--minutes", "0", "--pool", "4", "--workers", "1", "--batch", "2", "--device", "cpu", "--compile", "off"]
    tiny = ["--config", str(cfg), "--pool-cache", str(tmp_path / "pool.pkl"), *common]
    assert main(["--out", str(tmp_path / "a"), "--steps", "2", "--partial", "0.5", *tiny]) == 0
    assert main(["--out", str(tmp_path / "b"), "--steps", "1", "--partial", "0.5", "--init", str(tmp_path / "a"),
                 "--lr", "1e-12", *tiny]) == 0
    a, b = load(tmp_path / "a")[0].state_dict(), load(tmp_path / "b")[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # a step at lr 1e-12 from a's weights
    with pytest.raises(SystemExit, match="another EmbeddedConfig"):  # the default config
        main(["--out", str(tmp_path / "c"), "--steps", "1", "--init", str(tmp_path / "a"), *common])
    with pytest.raises(SystemExit, match="--partial 0.5, not 0.0"):  # the cached pool was rendered otherwise
        main(["--out", str(tmp_path / "d"), "--steps", "1", *tiny])


def test_bf16_autocast_training_run(tmp_path):
    from vlm_ros.embedded.train import cpu_has_bf16_matmul

    assert isinstance(cpu_has_bf16_matmul(), bool)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "weights"
    assert main(["--out", str(out), "--steps", "2", "--minutes", "0", "--pool", "4", "--workers", "1",
                 "--batch", "2", "--config", str(cfg), "--device", "cpu", "--precision", "bf16",
                 "--compile", "off"]) == 0
    facts = json.loads((out / "embedded_config.json").read_text())["train"]
    assert facts["precision"] == "bf16 autocast" and np.isfinite(facts["final_loss"])
    model, _ = load(out)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32
    with pytest.raises(SystemExit, match="exceeds the model's"):
        main(["--out", str(out), "--config", str(cfg), "--seq-tokens", str(TINY.max_positions + 1)])


CURRICULUM_CHECK = """
import sys
from vlm_ros.embedded.build import build_tokenizer
from vlm_ros.embedded.train import batch_stream, render_pool

workers, image_size, patch_size = (int(a) for a in sys.argv[1:])
scenes = render_pool(30, 0, image_size, image_size // patch_size, workers=1)
assert max(len(s.objects) for s in scenes.scenes) > 1
limit = [1]
stream = batch_stream(build_tokenizer(), scenes, (image_size // patch_size) ** 2, seed=0, batch=8, turns=1,
                      workers=workers, max_objects=lambda: limit[0])

def most_objects_seen(batches):
    # distinct (colour, shape, size) under the patches of each image: at most its number of objects
    return max(len({tuple(c) for c in classes[classes[:, 0] > 0].tolist()})
               for _ in range(batches) for classes in next(stream)["patch_classes"])

assert most_objects_seen(3) == 1
limit[0] = None
assert most_objects_seen(30) > 1  # after the prefetched batches, the limit is gone
print("ok")
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_curriculum_limits_the_objects_per_scene_also_in_loader_workers(workers):
    # in a fresh process: the loader forks its workers, and forking this test process (threads of other tests
    # running) can deadlock the child
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", CURRICULUM_CHECK, str(workers), str(TINY.image_size), str(TINY.patch_size)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_pool_pickles_without_full_size_scene_images(pool):
    import pickle

    data = pickle.dumps(pool)
    assert len(data) < len(pool.scenes) * 100_000  # a full-size image, labels and depth would be 2.7 MB a scene
    back = pickle.loads(data)
    assert back.seed_start == pool.seed_start and np.array_equal(back.pixels, pool.pixels)
    assert [s.objects for s in back.scenes] == [s.objects for s in pool.scenes]
    assert back.scenes[0].image.shape == pool.scenes[0].image.shape


def test_partial_fraction_picks_that_share_of_the_seeds():
    assert sum(is_partial(s, 0.3) for s in range(1000)) == 300
    assert not any(is_partial(s, 0.0) for s in range(1000))
