"""Lightning, Accelerate and the transformers `Trainer` driving pyfastopt optimizers: a run
stopped, saved to a checkpoint and resumed by the framework ends bit for bit where the
uninterrupted run ends. Optional: `pip install -e ".[frameworks]" -c constraints.txt`
(scripts/setup.sh does); each test is skipped only where its framework is not installed."""
import os

import pytest
import torch

import pyfastopt as po

STEPS, AT = 4, 2


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)


def _make_opt(ps):
    return po.ranger(ps, lr=1e-2, k=3)          # Lookahead's count and slow weights must travel


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_lightning_resume(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    x, y = _batch()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, _):
            bx, by = batch
            return torch.nn.functional.mse_loss(self.net(bx), by)

        def configure_optimizers(self):
            return _make_opt(self.net.parameters())

    def loader():                                # one batch per epoch: no mid-epoch resume
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)

    def trainer(steps):
        return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))

    full = Module()
    trainer(STEPS).fit(full, loader())
    part = Module()
    t = trainer(AT)
    t.fit(part, loader())
    ckpt = str(tmp_path / "part.ckpt")
    t.save_checkpoint(ckpt)
    resumed = Module()
    trainer(STEPS).fit(resumed, loader(), ckpt_path=ckpt)
    assert _same(full, resumed)


def test_accelerate_resume(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    x, y = _batch()

    def setup():
        acc = accelerate.Accelerator(cpu=True)
        net = _net()
        opt = _make_opt(net.parameters())
        net, opt = acc.prepare(net, opt)
        return acc, net, opt

    def steps(acc, net, opt, n):
        for _ in range(n):
            opt.zero_grad()
            acc.backward(torch.nn.functional.mse_loss(net(x), y))
            opt.step()

    acc, full, opt = setup()
    steps(acc, full, opt, STEPS)
    acc, part, opt = setup()
    steps(acc, part, opt, AT)
    acc.save_state(str(tmp_path / "state"))
    acc, resumed, opt = setup()
    acc.load_state(str(tmp_path / "state"))
    steps(acc, resumed, opt, STEPS - AT)
    assert _same(full, resumed)


def test_transformers_trainer_resume(tmp_path):
    transformers = pytest.importorskip("transformers")
    x, y = _batch()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels):
            return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}

    data = [{"x": a, "labels": b} for a, b in zip(x, y)]

    def run(out, resume=None):
        model = Net()
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=3, save_steps=AT,
            save_strategy="steps", report_to=[], use_cpu=True, logging_strategy="no",
            disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0)
        tr = transformers.Trainer(model=model, args=args, train_dataset=data,
                                  optimizers=(_make_opt(model.parameters()), None))
        tr.train(resume_from_checkpoint=resume)
        return model

    full = run(tmp_path / "full")
    ckpt = tmp_path / "full" / f"checkpoint-{AT}"
    assert ckpt.is_dir()
    resumed = run(tmp_path / "resumed", resume=str(ckpt))
    assert _same(full, resumed)
