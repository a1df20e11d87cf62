"""Issue 17 item 7: guide 003's histograms and check_gradients warnings as monitoring options,
best.ckpt beside best-step<N>.ckpt, and the whole resolved config logged as hparams."""

from __future__ import annotations

import os

import torch
import yaml
from reliability_helpers import train_run

from lm_lightning.callbacks.monitoring import Monitoring


class FakeTrainer:
    loggers: list = []
    is_global_zero = True


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h = torch.nn.ModuleList(torch.nn.Linear(2, 2, bias=False) for _ in range(4))


def test_check_gradients_warns_like_the_guide():
    net = Net()
    grads = [torch.full((2, 2), float("nan")), torch.full((2, 2), float("inf")), torch.full((2, 2), 500.0),
             torch.full((2, 2), 1e-4)]
    for layer, g in zip(net.h, grads):
        layer.weight.data.fill_(1.0)
        layer.weight.grad = g
    mon = Monitoring(check_gradients=True, check_every_n_steps=1, max_grad_param_ratio=1.0)
    mon._check_gradients(FakeTrainer(), net, step=3)
    assert mon.warnings == ["gradient check, step 3: NaN gradients in h.0.weight",
                            "gradient check, step 3: Inf gradients in h.1.weight",
                            "gradient check, step 3: large gradient in h.2.weight: grad 1000 > 100"]
    # The ratio warning: a gradient as large as the weights it updates.
    net.h[3].weight.grad = torch.full((2, 2), 2.0)
    for layer in net.h[:3]:
        layer.weight.grad = None
    mon.warnings.clear()
    mon._check_gradients(FakeTrainer(), net, step=4)
    assert mon.warnings == ["gradient check, step 4: grad/param ratio 2 in h.3.weight (grad 4, param 2) > 1"]
    # At most max_warnings lines per check, then a count.
    few = Monitoring(check_gradients=True, max_warnings=1)
    for layer in net.h:
        layer.weight.grad = torch.full((2, 2), float("nan"))
    few._check_gradients(FakeTrainer(), net, step=5)
    assert few.warnings == ["gradient check, step 5: NaN gradients in h.0.weight", "gradient check, step 5: ... and 3 more"]


def test_histograms_ratios_best_alias_and_full_hparams(tmp_path):
    train_run(tmp_path, ["logger=default", "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
                         "callbacks.monitoring.plots=false", "callbacks.monitoring.histograms=true",
                         "callbacks.monitoring.histogram_every_n_steps=2", "callbacks.monitoring.check_gradients=true",
                         "callbacks.monitoring.check_every_n_steps=1", "callbacks.monitoring.max_grad_param_ratio=1e-9",
                         "callbacks.monitoring.max_warnings=1"], run_name="h")
    run = tmp_path / "h"
    # Histograms of every parameter's gradient and weights in TensorBoard, guide 003's tag names.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    tags = set(events.Tags()["histograms"])
    assert {"Gradients/h.0.attn.c_attn.weight", "Weights/h.0.attn.c_attn.weight", "Weights/wte.weight"} <= tags, tags
    assert [e.step for e in events.Histograms("Weights/wte.weight")] == [0, 2]
    # The ratio per layer as a metric, the warnings in train.log (one line each, capped).
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "grad_param_ratio/h.0" in metrics.splitlines()[0]
    log = (run / "train.log").read_text()
    assert log.count("gradient check, step 0: grad/param ratio") == 1 and "gradient check, step 0: ... and" in log
    # best.ckpt: the same file as the best best-step<N>.ckpt, no temporary left.
    ckpts = run / "checkpoints"
    bests = sorted(ckpts.glob("best-step*.ckpt"))
    assert len(bests) == 1 and os.path.samefile(ckpts / "best.ckpt", bests[0])
    assert not list(ckpts.glob("*.tmp"))
    # The whole resolved config as hparams (CSV's hparams.yaml; W&B and TensorBoard get the same).
    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert hparams["optimizer"]["lr"] > 0 and hparams["trainer"]["max_steps"] == 4
    assert hparams["callbacks"]["monitoring"]["histograms"] is True and hparams["paths"]["output_dir"] == str(run)
