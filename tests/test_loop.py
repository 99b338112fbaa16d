"""The shared training loop: accumulation invariance, data order, schedule."""

from __future__ import annotations

import torch

from aligndistil_cli.training.distributed import DistInfo
from aligndistil_cli.training.loop import LoopSettings, MicroOutput, TrainLoop, global_batch, total_steps
from aligndistil_cli.training.progress import Reporter
from aligndistil_cli.training.schedule import lr_lambda


class RegressionTask:
    """Per-example squared error of a linear model: a loss whose gradient we fully control."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 5, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def example_ids(self, indices):
        return indices

    def micro_step(self, model, indices):
        pred = model(self.x[indices])
        per_example = ((pred - self.y[indices]) ** 2).sum(-1)
        logged = float(per_example.detach().sum())
        return MicroOutput(per_example.sum(), {"err": (logged, len(indices))}, len(indices))


def _train(tmp_path, micro: int, steps: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    settings = LoopSettings(output_dir=tmp_path, batch_size=4, micro_batch_size=micro, max_steps=steps,
                            lr=1e-2, warmup_ratio=0.0, max_grad_norm=1e9)
    TrainLoop(model, None, RegressionTask(), settings, DistInfo(), Reporter("t", enabled=False)).run()
    return model


def test_accumulation_1x4_equals_4x1(tmp_path):
    a = _train(tmp_path / "a", micro=1)
    b = _train(tmp_path / "b", micro=4)
    c = _train(tmp_path / "c", micro=3)  # uneven split: 3 + 1
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


def test_metrics_log_has_step_and_loss(tmp_path):
    import json

    _train(tmp_path, micro=2)
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all("loss" in m and "lr" in m and "err" in m for m in lines)


def test_global_batches_cover_each_epoch_once():
    s = LoopSettings(output_dir=".", batch_size=4, seed=3)
    seen = sum((global_batch(step, 10, s) for step in range(3)), [])
    assert sorted(seen) == list(range(10))       # ceil(10/4) = 3 steps, last one smaller
    assert global_batch(0, 10, s) == global_batch(0, 10, s)
    assert global_batch(3, 10, s) != global_batch(0, 10, s)  # next epoch reshuffles
    assert total_steps(10, LoopSettings(output_dir=".", batch_size=4, epochs=2)) == 6


def test_schedule_warmup_then_cosine_to_min():
    f = lr_lambda(total_steps=10, warmup_steps=2, decay="cosine", min_lr_ratio=0.1)
    assert f(0) == 0.5 and f(1) == 1.0          # linear warmup, step 0 already trains
    assert abs(f(2) - 1.0) < 1e-9                # decay starts at the peak
    assert abs(f(10) - 0.1) < 1e-9               # ends at the floor
    assert all(f(i) >= f(i + 1) for i in range(2, 10))
