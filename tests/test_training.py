"""Training library: data helpers, determinism, loss goes down, resume == uninterrupted."""

import pytest
import torch

from moga_analysis import training


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, busy CPU two spinning threads make these tiny runs crawl."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(embed_dims=(8, 8, 16, 16), depths=(1, 1, 1, 1), ffn_ratios=(2, 2, 2, 2))


def _data(n=96, seed=0):
    """Learnable synthetic 28x28 images: class c lights up a horizontal band at row 2 + 2c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(y.tolist()):
        x[i, 2 + 2 * c : 4 + 2 * c] = 255
    return x, y


def _cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, image_size=32, checkpoint_every=4,
                eval_batch_size=48, seed=3)
    base.update(kw)
    return training.TrainConfig(**base)


def _model(seed=3, variant="full"):
    return training.build_model(variant, seed=seed, **TINY)


def _run(tmp_path=None, resume=False, max_steps=None, model=None, **kw):
    model = model or _model()
    ckpt = None if tmp_path is None else tmp_path / "ckpt.pt"
    hist = training.train(model, _cfg(**kw), _data(), _data(48, 1), checkpoint=ckpt, resume=resume,
                          device="cpu", show_progress=False, max_steps=max_steps)
    return model, hist


def test_preprocess_and_augment():
    x, _ = _data(4)
    p = training.preprocess(x, 64, 3)
    assert p.shape == (4, 3, 64, 64) and p.dtype == torch.float32
    assert torch.equal(p[:, 0], p[:, 2])
    assert training.preprocess(x, 28, 1).shape == (4, 1, 28, 28)
    a1 = training.augment(x, torch.Generator().manual_seed(0))
    a2 = training.augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(a1, a2) and a1.shape == x.shape and a1.dtype == torch.uint8
    assert torch.equal(training.augment(x, torch.Generator(), max_shift=0).sum((1, 2)).sort().values,
                       training.augment(x, torch.Generator().manual_seed(5), max_shift=0).sum((1, 2)).sort().values)


def test_build_model_is_seeded_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b = _model(seed=1), _model(seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = _model(seed=2)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    with pytest.raises(ValueError, match="unknown variant"):
        training.build_model("no_such")
    assert not hasattr(training.build_model("no_gate", **TINY).blocks1[0].attn, "gate")


def test_loss_decreases_and_is_deterministic():
    m1, h1 = _run(epochs=4)
    m2, h2 = _run(epochs=4)
    assert h1["loss"] == h2["loss"]
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    losses = h1["loss"]
    assert sum(losses[-4:]) / 4 < 0.93 * sum(losses[:4]) / 4
    assert h1["done"] and len(h1["epochs"]) == 4 and 0.0 <= h1["epochs"][-1]["accuracy"] <= 1.0


def test_resume_equals_uninterrupted(tmp_path):
    full_model, full_hist = _run()
    part_model, part_hist = _run(tmp_path, max_steps=7)  # stops mid-epoch, between checkpoints
    assert not part_hist["done"]
    state = training.load_training_checkpoint(tmp_path / "ckpt.pt")
    assert state["step"] == 7
    resumed_model, resumed_hist = _run(tmp_path, resume=True, model=_model(seed=99))  # init is overwritten
    assert resumed_hist["done"]
    assert resumed_hist["loss"] == full_hist["loss"]
    for (k, p), q in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), k


def test_resume_refuses_other_config(tmp_path):
    _run(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="different config"):
        _run(tmp_path, resume=True, lr=1e-3)


def test_export_weights_fp16_loads_strictly(tmp_path):
    from moga_analysis.models.checkpoints import load_checkpoint

    m = _model()
    path = training.export_weights(m, tmp_path / "w.safetensors")
    m2 = load_checkpoint(_model(seed=5), path)
    for (k, p), q in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-3, rtol=1e-3), k


def test_shipped_samples():
    x, y = training.load_fmnist_samples()
    assert x.shape == (300, 3, 64, 64) and y.shape == (300,)
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 30))
    raw, _ = training.load_fmnist_samples(size=None)
    assert raw.dtype == torch.uint8 and raw.shape == (300, 28, 28)
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2
