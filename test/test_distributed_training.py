"""Distributed training (training/distributed.py): 2 gloo processes on the CPU, started by torchrun
through the real CLI, on a tiny student, teacher and route.

The 2-rank run's first epoch must give the weights and optimizer state one process gets with the
same global batches (global-batch InfoNCE and distillation terms, global BatchNorm statistics,
averaged gradients; a batch of 7 places splits 4 + 3, so the ranks hold different counts); only
rank 0 logs and writes; the interrupted 2-rank run resumes, here in one process, and ends where the
uninterrupted single-process run ends. The shipped recipe (configs/training/default_student.yaml:
the twin stage, integer spikes, the membrane readout, the energy term) at a tiny size also ends on
2 ranks where it ends in one process."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vl2spike_training.cli import main
from vl2spike_training.config import load_config
from vl2spike_training.distributed import shares
from vl2spike_training.trainer import train_student
from vl2spike_ros.core.tensor_files import read_safetensors

from training_fixtures import TINY_STUDENT, write_traverses

EPOCH_LINE = "student epoch 1/2"
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "training" / "default_student.yaml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "vl2spike_training.cli", "train"]
TORCHRUN_ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def overrides(out_dir, summer, winter) -> list[str]:
    items = {**{f"student.{key}": value for key, value in TINY_STUDENT.items()},
             "data.reference": summer, "data.query": winter, "data.block_size": 4,
             "optim.epochs": 2, "optim.batch_size": 7, "optim.warmup_epochs": 0,
             "teacher.spec": "train-cnn", "teacher.cnn.widths": "[4,8]", "teacher.cnn.strides": "[2,2]",
             "teacher.cnn.epochs": 1, "teacher.cnn.batch_size": 8, "teacher.cnn.embed_dim": 8,
             "distill.align_weight": 1.0, "distill.relation_weight": 1.0, "distill.temporal_weight": 0.5,
             "distill.temporal_warmup_epochs": 0, "distill.membrane_weight": 0.1, "distill.rate_weight": 0.1,
             "run.out_dir": out_dir, "run.progress": False}
    return [f"{key}={value}" for key, value in items.items()]


def module_tensors(path):
    tensors, metadata = read_safetensors(path, "training state", "")
    return {name: tensor for name, tensor in tensors.items() if not name.startswith("rng.")}, metadata


def assert_same_state(found, expected):
    """Weights and optimizer moments to float tolerance; BatchNorm running statistics, recomputed from
    spikes before each evaluation (a weight 1e-6 away can flip a spike at the threshold), to 1%."""
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        loose = name.endswith(("running_mean", "running_var"))
        torch.testing.assert_close(found[name], tensor, rtol=1e-2 if loose else 1e-4, atol=1e-4 if loose else 1e-5,
                                   msg=name)


def test_shares_split_a_batch_into_contiguous_near_equal_parts():
    assert [part.tolist() for part in shares(7, 2)] == [[0, 1, 2, 3], [4, 5, 6]]


def test_ablate_refuses_to_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["ablate"]) == 2
    assert capsys.readouterr().err.strip() == ("vl2spike-train: error: ablate: expected a single process; "
                                               "start it without torchrun (train runs under torchrun)")


def test_two_ranks_match_one_process_and_resume(tmp_path):
    summer, winter = (str(path) for path in write_traverses(tmp_path / "route", places=24))
    reference_dir, distributed_dir = tmp_path / "one", tmp_path / "two"

    def keep_first_epoch(message):
        if message.startswith(EPOCH_LINE):
            shutil.copy(reference_dir / "state.safetensors", tmp_path / "one_epoch1.safetensors")

    reference = train_student(load_config(None, overrides(reference_dir, summer, winter)), log=keep_first_epoch)

    command = list(TORCHRUN)
    # A teacher cache of its own, so the two ranks train the teacher rather than reuse the one above.
    for item in overrides(distributed_dir, summer, winter) + [f"teacher.cache_dir={tmp_path / 'cache_two'}"]:
        command += ["--set", item]
    with subprocess.Popen(command, env=TORCHRUN_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as run:
        lines = []
        for line in run.stdout:
            lines.append(line)
            if line.startswith(EPOCH_LINE):  # interrupted once epoch 1 is saved
                os.killpg(run.pid, signal.SIGTERM)
                break
        run.communicate(timeout=60)
    output = "".join(lines)
    assert any(line.startswith(EPOCH_LINE) for line in lines), output[-3000:]
    assert output.count("teacher epoch 1/1") == 1  # rank 0 alone trained the teacher and logs

    state, metadata = module_tensors(distributed_dir / "state.safetensors")
    assert metadata["epoch"] == "1"
    expected, _ = module_tensors(tmp_path / "one_epoch1.safetensors")
    assert_same_state(state, expected)
    written = sorted(path.name for path in distributed_dir.iterdir())
    assert written == ["metrics.jsonl", "state.safetensors"]  # teacher and features live in the cache

    messages = []
    resumed = train_student(load_config(None, overrides(distributed_dir, summer, winter)), log=messages.append)
    assert any(message.startswith("resuming") for message in messages)
    assert resumed["final"]["loss_task"] == pytest.approx(reference["final"]["loss_task"], rel=1e-4)
    assert_same_state(module_tensors(distributed_dir / "state.safetensors")[0],
                      module_tensors(reference_dir / "state.safetensors")[0])


def recipe_overrides(out_dir, summer, winter) -> list[str]:
    """The shipped recipe as it is (integer spikes 0..4 at one timestep, membrane readout, energy
    weight 15, a twin stage, letterboxed frames, route_tail with the test stretch in training) at a
    tiny size: a small student, a 40-place route, one twin epoch and one student epoch of global
    batches of 7 places. Its places beyond the route train in one process (refused under torchrun,
    below), so they are left out here."""
    items = {**{f"student.{key}": value for key, value in TINY_STUDENT.items() if key != "timesteps"},
             "data.reference": summer, "data.query": winter, "data.block_size": 4,
             "data.validation_until_frame": 440, "data.test_after_frame": 470,
             "optim.twin_epochs": 1, "optim.epochs": 1, "optim.batch_size": 7, "optim.warmup_epochs": 0,
             "data.extra_domains": "[]", "data.validation_sets": "[]", "data.test_in_training": "true",
             "run.out_dir": out_dir, "run.export": out_dir / "student.safetensors", "run.progress": False}
    return [f"{key}={value}" for key, value in items.items()]


def test_the_shipped_recipe_on_two_ranks_ends_where_one_process_ends(tmp_path):
    summer, winter = (str(path) for path in write_traverses(tmp_path / "route", places=40))
    one, two = tmp_path / "one", tmp_path / "two"
    config = load_config(RECIPE, recipe_overrides(one, summer, winter))
    student = config["student"]
    assert (student["neuron"], student["spike_levels"], student["timesteps"], student["readout"]) == \
        ("integer", 4, 1, "membrane") and config["distill"]["energy_weight"] > 0
    reference = train_student(config)

    command = TORCHRUN + ["--config", str(RECIPE)]
    for item in recipe_overrides(two, summer, winter):
        command += ["--set", item]
    done = subprocess.run(command, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("twin stage: the ANN twin first") == 1  # rank 0 alone logs

    assert_same_state(module_tensors(two / "twin" / "state.safetensors")[0],
                      module_tensors(one / "twin" / "state.safetensors")[0])
    # The integer student started from the twin (weights 1e-7 apart) and rounds its membrane to four
    # levels: a potential at a rounding boundary can round the other way, which moves a few
    # gradients by 1e-4 of their tensor's largest entry. Averaging the ranks' energy terms instead of
    # weighting them by frames moved nearly every entry, by up to its tensor's largest one.
    found, expected = module_tensors(two / "state.safetensors")[0], module_tensors(one / "state.safetensors")[0]
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        share = 2e-2 if name.endswith(("running_mean", "running_var")) else 2e-3
        assert (found[name] - tensor).abs().max() <= share * tensor.abs().max(), name
    distributed = json.loads((two / "summary.json").read_text())
    # A batch of 7 places splits 4 + 3: the energy term is the whole batch's, not the mean of the ranks'.
    assert distributed["final"]["loss_energy"] == pytest.approx(reference["final"]["loss_energy"], rel=1e-4)
    assert distributed["twin"]["checkpoint"] == str(two / "twin" / "twin.safetensors")


def test_places_beyond_the_route_are_refused_under_torchrun(tmp_path):
    summer, winter = (str(path) for path in write_traverses(tmp_path / "route", places=40))
    command = TORCHRUN + ["--config", str(RECIPE)]
    for item in recipe_overrides(tmp_path / "run", summer, winter):
        if not item.startswith("data.extra_domains="):
            command += ["--set", item]
    done = subprocess.run(command, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "data.extra_domains needs one process" in done.stdout + done.stderr
    assert not (tmp_path / "run" / "twin").exists()
