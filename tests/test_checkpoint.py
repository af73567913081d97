"""checkpoint.py: the run directory's lock, readers beside a writer, the whole training state saved and restored."""

import dataclasses
import json
import os
import threading
import time

import pytest
import torch

from bertmath import checkpoint as ckpt
from bertmath.config import Config
from bertmath.distributed import DistInfo
from bertmath.errors import OutputError, RunDirInUseError
from bertmath.io import read_safetensors
from bertmath.model import BertForMaskedLM
from bertmath.pretrained import load_model_and_tokenizer
from bertmath.tokenizer import train_tokenizer

from helpers import make_bertmath_run, sentences, tiny_model_config


def test_lock_is_exclusive_names_its_holder_and_outlives_its_release(tmp_path):
    out = tmp_path / "run"
    held = ckpt.lock_run_dir(out)  # creates out
    holder = json.loads((out / ckpt.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["started"]
    # flock belongs to an open file, not to a process: a second open in this process is a second writer
    with pytest.raises(RunDirInUseError) as error:
        ckpt.lock_run_dir(out)
    assert str(error.value) == (f"train.out_dir {out} is in use by pid {os.getpid()} (started {holder['started']}); "
                                "wait until it ends, or choose another train.out_dir")
    assert json.loads((out / ckpt.LOCK_FILE).read_text()) == holder  # the refused writer left it as it was
    held.close()
    assert (out / ckpt.LOCK_FILE).is_file()  # never deleted (see lock_run_dir)
    ckpt.lock_run_dir(out).close()


def test_a_lock_file_not_yet_written_still_refuses_the_second_writer(tmp_path):
    held = ckpt.lock_run_dir(tmp_path)
    held.truncate(0)  # as just after the holder's flock, before it writes its pid
    held.flush()
    with pytest.raises(RunDirInUseError, match="in use by another process"):
        ckpt.lock_run_dir(tmp_path)
    held.close()


def test_a_lock_that_cannot_be_created_is_one_output_error(tmp_path):
    (tmp_path / ckpt.LOCK_FILE).mkdir()
    with pytest.raises(OutputError, match="cannot create the lock file"):
        ckpt.lock_run_dir(tmp_path)


def test_readers_always_load_one_whole_step_directory_while_a_run_saves_and_prunes(tmp_path):
    """A writer thread saves steps 1..40 (keep 0: each save deletes the step before); meanwhile a reader polls
    latest_checkpoint and loads the run as fill-mask does. Every step's tensors are all equal to its step, so
    a load that mixed files of two steps, or met a half-written or pruned directory, shows."""
    out = make_bertmath_run(tmp_path / "run")
    step_dir = ckpt.latest_checkpoint(out)
    files = {name: (step_dir / name).read_bytes() for name in (ckpt.CONFIG_FILE, ckpt.TOKENIZER_FILE)}
    weights = read_safetensors(step_dir / ckpt.MODEL_FILE)
    failures = []

    def save(step: int) -> None:
        state = {name: torch.full_like(tensor, float(step)) for name, tensor in weights.items()}
        ckpt.save_checkpoint(out, step, {**files, ckpt.MODEL_FILE: state}, keep=0)

    def save_steps():
        try:
            for step in range(1, 41):
                save(step)
                time.sleep(0.01)  # a run trains between saves; without a pause it could outpace every retry
        except BaseException as e:  # noqa: BLE001  reported by the test's thread
            failures.append(e)

    save(0)  # step-0000000 again, now with its tensors all 0
    writer = threading.Thread(target=save_steps)
    writer.start()
    loads = []
    while writer.is_alive() or not loads:
        polled = int(ckpt.latest_checkpoint(out).name[len(ckpt.STEP_PREFIX):])
        model, tokenizer = load_model_and_tokenizer(BertForMaskedLM, out)
        values = torch.cat([p.detach().flatten() for p in model.parameters()]).unique()
        assert len(values) == 1 and values.item() >= polled, (polled, values[:5])
        assert tokenizer.token_to_id("[MASK]") is not None
        loads.append(values.item())
    writer.join()
    assert not failures, failures
    assert loads == sorted(loads)  # never an older step after a newer one


def _training_objects(seed: int):
    """A tiny BertForMaskedLM after one AdamW step (so the moments are not zero), its optimizer and scaler."""
    torch.manual_seed(seed)
    model = BertForMaskedLM(tiny_model_config(vocab_size=60))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(5, 60, (2, 8))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    return model, optimizer, torch.amp.GradScaler("cpu", enabled=False)


def test_the_whole_training_state_is_saved_and_restored(tmp_path):
    """save_training_state writes the format check_resumable accepts; restore_training_state puts back the weights,
    the AdamW moments and hyper-parameters, the train state and this process's RNG."""
    model, optimizer, scaler = _training_objects(seed=0)
    tokenizer = train_tokenizer(sentences(100), vocab_size=60)
    config = dataclasses.replace(Config(), model=model.config)
    train_state = {"step": 7, "tokens_seen": 700, "elapsed_s": 1.5}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    step_dir = ckpt.save_training_state(tmp_path, model, optimizer, scaler, config, tokenizer, train_state,
                                        DistInfo(), torch.device("cpu"))
    assert step_dir == tmp_path / "step-0000007" and ckpt.checkpoint_damage(step_dir) is None
    assert ckpt.read_config(step_dir) == config

    other, other_optimizer, other_scaler = _training_objects(seed=1)
    torch.manual_seed(999)
    restored, rng_restored = ckpt.restore_training_state(step_dir, other, other_optimizer, other_scaler, DistInfo(),
                                                         torch.device("cpu"))
    assert restored == train_state and rng_restored
    assert torch.equal(torch.get_rng_state(), rng)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(optimizer.state.values(), other_optimizer.state.values()):
        assert all(torch.equal(a[key], b[key]) for key in ("exp_avg", "exp_avg_sq", "step"))

    # saved by 2 processes, resumed by 1: everything but the RNG, which the caller re-seeds
    state = json.loads((step_dir / ckpt.STATE_FILE).read_text())
    (step_dir / ckpt.STATE_FILE).write_text(json.dumps({**state, "world_size": 2}))
    assert ckpt.restore_training_state(step_dir, other, other_optimizer, other_scaler, DistInfo(),
                                       torch.device("cpu")) == (train_state, False)
