"""The device and precision layer: device choice, autocast dtypes, and the float16 loss-scaling
path that CUDA training takes, run here on the CPU through the same training code."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import imgcls.training.run as prepare_module
import imgcls.training.steps as steps_module
from imgcls import checkpoint as ckpt
from imgcls import device as dev
from imgcls.cli.main import main
from imgcls.errors import ConfigError

FAST = [
    "--img-size",
    "16",
    "--batch-size",
    "8",
    "--model",
    "lenet",
    "--epochs",
    "2",
    "--precision",
    "fp16",
    "--set",
    "train.threads=1",
    "--set",
    "train.eval_batch_size=64",
    "--set",
    "augment.mixup=0.2",
]


def test_auto_is_the_cpu_without_a_gpu_and_cuda_without_one_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU.*--device cpu"):
        dev.resolve_device("cuda")
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        dev.resolve_device("gpu")


def test_cuda_takes_the_gpu_of_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process torchrun started on this node
    assert dev.resolve_device("auto") == torch.device("cuda", 1)
    assert dev.resolve_device("cuda") == torch.device("cuda", 1)
    assert dev.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="cuda:0 to cuda:1"):
        dev.resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="at most 2 processes"):
        dev.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the scheduler shows each process its own GPU
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="all 4 processes on one GPU"):
        dev.resolve_device("cuda:0")


def test_resuming_on_a_gpu_an_epoch_saved_on_the_cpu_warns_instead_of_failing(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *args: pytest.fail("no GPU state to set"))
    state = torch.get_rng_state()
    dev.set_rng_states({"torch": state, "cuda": None}, torch.device("cuda", 0))
    assert "no GPU random state" in caplog.text


def test_precision_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert dev.choose_autocast("fp32", cpu) is None
    assert dev.choose_autocast("bf16", cpu) is torch.bfloat16
    assert dev.choose_autocast("fp16", cpu) is torch.float16
    assert dev.choose_autocast("auto", cpu) is (torch.bfloat16 if dev.cpu_has_bf16() else None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))  # T4: bfloat16 only emulated
    assert dev.choose_autocast("auto", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))  # A100
    assert dev.choose_autocast("auto", cuda) is torch.bfloat16
    assert dev.grad_scaler(torch.float16, cpu).is_enabled()
    assert not dev.grad_scaler(torch.bfloat16, cpu).is_enabled() and not dev.grad_scaler(None, cpu).is_enabled()


def test_a_onednn_limit_without_bf16_means_float32_on_a_bf16_cpu(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX512_CORE runs a bfloat16 CPU's convolutions as a CPU without it
    does, where bfloat16 is emulated and slow: auto then trains in float32."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512_BF16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    cpu = torch.device("cpu")
    assert dev.cpu_has_bf16() and dev.choose_autocast("auto", cpu) is torch.bfloat16
    for limit in ("AVX512_CORE", "avx2"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
        assert not dev.cpu_has_bf16() and dev.choose_autocast("auto", cpu) is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert dev.cpu_has_bf16()


def test_a_cpu_batch_stays_where_it_is():
    batch = torch.zeros(4, 8, 8, 1, dtype=torch.uint8)
    assert dev.to_device(batch, torch.device("cpu")) is batch


def test_gradients_are_unscaled_before_clipping():
    """Clipping the scaled gradients would shrink every step by the loss scale (65,536)."""
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    opt = SimpleNamespace(
        optimizer=optimizer,
        scaler=scaler,
        ema=None,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
    )
    loss = (model(torch.tensor([[10.0]])) - 100.0).pow(2).sum()  # true gradient -2000, clipped to norm 1
    scaler.scale(loss).backward()
    steps_module.optimizer_step(opt, model, clip_grad_norm=1.0)
    assert model.weight.item() == pytest.approx(1.0)
    assert model.weight.grad is None  # zeroed for the next step


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.helpers import make_class_folders

    return make_class_folders(tmp_path_factory.mktemp("fp16") / "data", per_class=16, junk=False)


def _overflowing_scaler(dtype, device):
    """A loss scale so large that the first steps overflow in float16: the scaler skips them
    and halves the scale, so its state matters to how the run goes on."""
    return torch.amp.GradScaler(device.type, init_scale=2.0**20, enabled=dtype == torch.float16)


def _outcome(run: Path) -> tuple[dict, str]:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    history = [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()]  # without seconds
    return metrics, "\n".join(history)


@pytest.mark.slow
def test_float16_with_loss_scaling_trains_and_resumes_exactly(data, tmp_path, monkeypatch):
    """The CUDA recipe's arithmetic (float16 autocast + GradScaler) through imgcls's training
    loop on the CPU: a Ctrl-C in epoch 2 saves the scaler's state with the run, and the
    resumed run ends exactly as the uninterrupted one."""
    monkeypatch.setattr(prepare_module, "grad_scaler", _overflowing_scaler)
    straight = tmp_path / "straight"
    assert main(["-q", "train", str(data), "--out", str(straight), *FAST]) == 0
    summary = json.loads((straight / "summary.json").read_text(encoding="utf-8"))
    assert summary["precision"] == "float16 autocast with loss scaling" and summary["device"] == "cpu"
    scaler = ckpt.read_metadata(straight / "last.safetensors")["resume"]["scaler"]
    assert scaler["scale"] < 2.0**20  # overflowing steps were skipped and the scale lowered

    real_step, steps = steps_module.optimizer_step, {"n": 0}

    def step_then_ctrl_c(*args):
        real_step(*args)
        steps["n"] += 1
        if steps["n"] == 6:  # epoch 2, step 2
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(steps_module, "optimizer_step", step_then_ctrl_c)
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), *FAST]) == 130
    saved = ckpt.read_metadata(run / "last.safetensors")["resume"]
    assert saved["partial"]["step"] == 2 and saved["scaler"]["scale"] < 2.0**20
    monkeypatch.setattr(steps_module, "optimizer_step", real_step)
    assert main(["-q", "train", "--resume", "--out", str(run)]) == 0
    assert _outcome(run) == _outcome(straight)


@pytest.mark.slow
def test_inference_runtimes_from_the_command_line(data, tmp_path, monkeypatch, capsys):
    """evaluate/predict --runtime: ONNX Runtime scores like PyTorch; cuda without a GPU says so."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                str(data),
                "--out",
                str(run),
                "--img-size",
                "16",
                "--model",
                "lenet",
                "--epochs",
                "1",
                "--set",
                "train.threads=1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    checkpoint = str(run / "best.safetensors")
    scores = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / runtime
        assert main(["-q", "evaluate", checkpoint, str(data), "--json", "--runtime", runtime, "--out", str(out)]) == 0
        scores[runtime] = json.loads(capsys.readouterr().out)
        assert (
            json.loads((out / "summary.json").read_text(encoding="utf-8"))["runtime"]
            == {"torch": "torch", "onnx": "onnxruntime"}[runtime]
        )
    assert scores["onnx"]["accuracy"] == scores["torch"]["accuracy"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = str(next((data / "bird").iterdir()))
    assert main(["-q", "predict", checkpoint, image, "--runtime", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_a_resumed_run_may_move_to_another_device(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = [
        "-q",
        "train",
        str(data),
        "--out",
        str(run),
        "--img-size",
        "16",
        "--model",
        "lenet",
        "--epochs",
        "1",
        "--set",
        "train.threads=1",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    config = (run / "config.yaml").read_text(encoding="utf-8")
    (run / "config.yaml").write_text(config.replace("epochs: 1", "epochs: 2"), encoding="utf-8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["-q", "train", "--resume", "--out", str(run), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert main(["-q", "train", "--resume", "--out", str(run), "--device", "cpu"]) == 0
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert main(["-q", "train", "--resume", "--out", str(run), "--epochs", "3"]) == 2  # another value: refused
    assert "train.epochs 3 differs from the run's 2" in capsys.readouterr().err
