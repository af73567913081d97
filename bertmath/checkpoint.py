"""The run directory and the whole training state: save_training_state / restore_training_state own its format.

A run directory (`train.out_dir`) looks like

    out_dir/
      step-0000500/        one complete checkpoint per saved step (older ones pruned to train.keep_checkpoints)
        model.safetensors  weights, bertmath names, a tied matrix stored once
        config.yaml        the resolved Config: the checkpoint rebuilds its model with no YAML at hand
        tokenizer.json
        optimizer.safetensors  AdamW moments by parameter name, each process's RNG state (tensors only: no pickle)
        trainer_state.json     step, tokens seen, AdamW hyper-parameters, scaler, data position
      model.safetensors, config.yaml, tokenizer.json, ...   hard links to the latest step's files
      metrics.jsonl
      .lock                the pretraining run writing here holds flock on it (see lock_run_dir)

Each step directory is written under a temporary name, fsync'ed, and renamed into place, so a kill at
any moment leaves the previous checkpoint complete: the latest checkpoint is the highest `step-*`.
One pretraining run writes a run directory at a time (lock_run_dir); readers take no lock and read one
whole step directory even while the run prunes or replaces it (pretrained.read_resolved). A run resumes
from the latest checkpoint; if that one is damaged on disk, it stops with an error naming the newest
intact one (check_resumable: the policy, and why it does not fall back by itself).
Loading never unpickles: safetensors and JSON only. Reading any checkpoint directory for inference (and
transformers' layout) is pretrained.py's; the atomic writes themselves are io.py's.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn
from tokenizers import Tokenizer

from .config import Config, config_to_yaml, load_config
from .distributed import DistInfo, gather_objects, is_sharded
from .errors import CheckpointError, ConfigError, OutputError, RunDirInUseError
from .io import atomic_save_safetensors, atomic_write_bytes, fsync_dir, read_json, read_safetensors, tmp_name

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
STEP_PREFIX = "step-"
LOCK_FILE = ".lock"
LATEST_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, OPTIMIZER_FILE, STATE_FILE)


# --- model weights --------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The bare bertmath model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to save, on the CPU: bare names, each tied matrix once (under its first name).

    For an FSDP-sharded model every process must call this (the shards are gathered); the full tensors
    arrive on rank 0, the other processes get {}."""
    # torch's distributed state-dict API is imported where it is used: ~1 s that `import bertmath` and the
    # inference commands, which only reach load_state_into, need not pay
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = unwrap(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied = _tied_names(model)
    return {name: tensor.cpu() for name, tensor in state.items() if name not in tied}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(tensors, param_groups) to save: each moment as 'state.<parameter name>.<key>' (CPU), and the groups'
    hyper-parameters with parameter names in place of positions. Collective under FSDP, as model_state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(unwrap(model), optimizer,
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors = {f"state.{name}.{key}": value.cpu() for name, moments in state.get("state", {}).items()
               for key, value in moments.items()}
    return tensors, state.get("param_groups", [])


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         param_groups: list[dict], where: str) -> None:
    """Inverse of optimizer_state (every process passes the whole state; FSDP keeps its shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            parameter, key = name[len("state."):].rsplit(".", 1)
            state.setdefault(parameter, {})[key] = tensor
    try:
        set_optimizer_state_dict(unwrap(model), optimizer, {"state": state, "param_groups": param_groups},
                                 options=StateDictOptions(full_state_dict=True))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: optimizer state does not fit this model ({str(e).splitlines()[0][:160]})") from None


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy `state` (bertmath names) into `model`, adapting BertModel ↔ BertForMaskedLM prefixes.

    Shape mismatches and missing encoder tensors are CheckpointErrors naming the tensor; a missing MLM
    head (a checkpoint of a plain BertModel) is a warning naming the head tensors left at their init."""
    model = unwrap(model)
    expected = model.state_dict()
    wants_prefix = any(k.startswith("bert.") for k in expected)
    has_prefix = any(k.startswith("bert.") for k in state)
    if wants_prefix and not has_prefix:
        state = {(k if k.startswith("mlm_head.") else f"bert.{k}"): v for k, v in state.items()}
    elif has_prefix and not wants_prefix:
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    tied = _tied_names(model)
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{where}: tensor '{name}' has shape {tuple(tensor.shape)} in the checkpoint "
                                  f"but {tuple(expected[name].shape)} in the model built from its config")
        if name in expected and expected[name].is_floating_point() and not tensor.is_floating_point():
            # copy_ would silently turn integers into weights: not something a trainer saved
            raise CheckpointError(f"{where}: tensor '{name}' has dtype {tensor.dtype} in the checkpoint; expected "
                                  "floating point weights")
    missing = [k for k in expected if k not in state and k not in tied]
    missing_head = [k for k in missing if k.startswith("mlm_head.")]
    missing_pooler = [k for k in missing if k.startswith("pooler.") or k.startswith("bert.pooler.")]
    # a new task head (a classifier, a span head, ModernBERT's per-token transform): fine-tuning trains it
    missing_classifier = [k for k in missing if k.startswith(("classifier.", "qa_outputs.", "head."))]
    missing_body = [k for k in missing if k not in missing_head + missing_pooler + missing_classifier]
    if missing_body:
        raise CheckpointError(f"{where}: missing {len(missing_body)} tensors, e.g. '{missing_body[0]}'")
    if missing_head:
        log.warning("%s has no MLM head; these tensors keep their random init: %s", where, ", ".join(missing_head))
    if missing_pooler:
        log.warning("%s has no pooler; these tensors keep their random init: %s", where, ", ".join(missing_pooler))
    if missing_classifier:
        log.info("%s has no head for this task: a new one starts from its init (%s)", where,
                 ", ".join(missing_classifier))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        log.info("%s: ignoring %d tensors the model does not use, e.g. %s", where, len(unexpected), unexpected[0])
    state = {name: tensor for name, tensor in state.items() if name in expected}
    if is_sharded(model):  # each process keeps its shard of the full tensors
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor)


def _tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that are an earlier name's parameter (e.g. the tied MLM decoder weight)."""
    seen, tied = set(), set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return tied


# --- run directories ------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete step directories, oldest first (temporary ones start with '.' and are not listed)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    dirs = [p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
            and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(out_dir: Path, step: int, files: dict[str, bytes | dict[str, torch.Tensor]],
                    keep: int) -> Path:
    """Write one checkpoint atomically as out_dir/step-XXXXXXX, link its files into out_dir, and prune
    all but the newest `keep` older checkpoints. `files` maps a file name to bytes, or to tensors
    (written as safetensors)."""
    out_dir = Path(out_dir)
    final = out_dir / step_dir_name(step)
    tmp = out_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict):
            atomic_save_safetensors(content, tmp / name)
        else:
            atomic_write_bytes(tmp / name, content)
    if final.exists():  # the same step saved again (e.g. after a resume): replace it whole
        old = out_dir / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(out_dir)
    link_latest(out_dir, final)
    for old in list_checkpoints(out_dir)[:-(keep + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def model_files(model: nn.Module, config: Config, tokenizer: Tokenizer) -> dict[str, bytes | dict[str, torch.Tensor]]:
    """The files that rebuild a model with no YAML at hand: weights, the resolved config, the tokenizer (what
    fill-mask, export and the viz commands read). Collective under FSDP, as model_state."""
    return {MODEL_FILE: model_state(model), CONFIG_FILE: config_to_yaml(config).encode(),
            TOKENIZER_FILE: tokenizer.to_str().encode()}


def save_training_state(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, config: Config, tokenizer: Tokenizer, train_state: dict,
                        info: DistInfo, device: torch.device, data: dict | None = None) -> Path | None:
    """Save everything a run needs to continue exactly as step directory train_state["step"] of `out_dir`:
    model_files, the AdamW moments and each process's RNG state (OPTIMIZER_FILE: tensors only), and
    `train_state` with the optimizer's hyper-parameters, the process count, the scaler and `data`, what the
    run trains on (data.data_fingerprint, JSON), for a resume to compare (STATE_FILE).
    Every process calls it (FSDP gathers the shards, each process's RNG is gathered); rank 0 writes and
    gets the directory, the others None."""
    files = model_files(model, config, tokenizer)
    moments, param_groups = optimizer_state(model, optimizer)
    rng_states = gather_objects(_rng_state(device), info)
    if not info.is_main:
        return None
    tensors = dict(moments)
    for rank, (cpu, cuda) in enumerate(rng_states):
        tensors[f"rng.torch.{rank}"] = cpu
        if cuda is not None:
            tensors[f"rng.cuda.{rank}"] = cuda
    state = {"train_state": train_state, "param_groups": param_groups, "world_size": info.world_size,
             "scaler": scaler.state_dict() if scaler.is_enabled() else None, "data": data}
    files[OPTIMIZER_FILE] = tensors
    files[STATE_FILE] = json.dumps(state, indent=1).encode()
    return save_checkpoint(out_dir, train_state["step"], files, keep=config.train.keep_checkpoints)


def restore_training_state(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler, info: DistInfo, device: torch.device) -> tuple[dict, bool]:
    """Load what save_training_state wrote in `directory` into `model`, `optimizer`, `scaler` and this
    process's RNG; returns (train_state, whether the RNG was restored). It is not when the checkpoint was
    saved by another number of processes: then the caller re-seeds dropout."""
    load_state_into(model, read_safetensors(directory / MODEL_FILE), str(directory))
    saved = read_json(directory / STATE_FILE)
    tensors = read_safetensors(directory / OPTIMIZER_FILE)
    try:
        load_optimizer_state(model, optimizer, tensors, saved["param_groups"], str(directory))
        train_state = dict(saved["train_state"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}: trainer state does not fit this model/optimizer ({e})") from None
    if saved.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(saved["scaler"])
    rank = info.rank
    if saved.get("world_size", 1) != info.world_size or f"rng.torch.{rank}" not in tensors:
        log.warning("%s was saved by %s process(es), this run has %d: dropout draws are re-seeded", directory,
                    saved.get("world_size", 1), info.world_size)
        return train_state, False
    torch.set_rng_state(tensors[f"rng.torch.{rank}"])
    if f"rng.cuda.{rank}" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"], device)
    return train_state, True


def saved_data(directory: Path) -> dict | None:
    """The data a checkpoint was trained on, as save_training_state recorded it; None for a checkpoint that
    recorded none (written before checkpoints did, or by fine-tuning)."""
    data = read_json(Path(directory) / STATE_FILE).get("data")
    return data if isinstance(data, dict) else None


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(CPU RNG state, this process's GPU RNG state or None): what drives its dropout."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def remove_temporaries(out_dir: Path) -> None:
    """Delete what a killed save left behind: .step-*.tmp-PID / .step-*.old-PID directories, .*.tmp-PID files."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if path.name.startswith(f".{STEP_PREFIX}") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".") and path.name.rpartition(".tmp-")[2].isdigit() and path.is_file():
            path.unlink(missing_ok=True)


def lock_run_dir(out_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the run directory `out_dir` (created if missing) until the returned file is
    closed: `fcntl.flock` on out_dir/.lock, a file that holds the holder's pid, host and start time as JSON.
    A second writer gets a RunDirInUseError naming them.

    The kernel drops a flock when its process dies, even by SIGKILL, so a killed run leaves no stale lock
    to block its own resume. The file itself is never deleted: a process that opened it just before an
    unlink would lock the old file while a newcomer locks a new one of the same name, and both would write.
    Readers (fill-mask, export, plot) take no lock: a step directory appears whole, by one rename."""
    out_dir = Path(out_dir)
    path = out_dir / LOCK_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Opened without truncating: until we hold the lock, what the file says belongs to its holder.
        lock = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8", errors="replace")
    except OSError as e:
        raise OutputError(f"train.out_dir: cannot create the lock file {path} ({e.strerror or e})") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = lock.read()
        lock.close()
        if isinstance(e, BlockingIOError):
            raise RunDirInUseError(f"train.out_dir {out_dir} is in use by {_lock_holder(holder)}; wait until it "
                                   "ends, or choose another train.out_dir") from None
        raise OutputError(f"train.out_dir: cannot lock {path} ({e.strerror or e})") from None
    lock.truncate()
    lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": datetime.now().astimezone().isoformat(timespec="seconds")}) + "\n")
    lock.flush()
    return lock


def _lock_holder(text: str) -> str:
    """"pid N (started T)" from a lock file's JSON, with the host when it is not this one."""
    try:
        holder = json.loads(text)
        where = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
        return f"pid {int(holder['pid'])}{where} (started {holder.get('started', 'at an unknown time')})"
    except (ValueError, TypeError, KeyError, AttributeError):  # the holder has locked but not yet written
        return "another process (its pid is not written yet)"


def link_latest(out_dir: Path, step_dir: Path) -> None:
    """out_dir/<file> → the latest step's file, each replaced atomically (a hard link, or a copy); one that is
    already a link to it is left as it is (a resume re-links, and mostly finds every file linked)."""
    for name in LATEST_FILES:
        source = step_dir / name
        if not source.exists() or ((out_dir / name).exists() and os.path.samefile(source, out_dir / name)):
            continue
        tmp = tmp_name(out_dir / name)
        try:
            if tmp.exists():
                tmp.unlink()
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, out_dir / name)


def read_config(directory: Path) -> Config:
    """The resolved Config a bertmath checkpoint directory saved (config.yaml); CheckpointError otherwise."""
    try:
        return load_config(Path(directory) / CONFIG_FILE)
    except ConfigError as e:  # its message names the file; a bad checkpoint is not a bad command line (exit 1)
        raise CheckpointError(str(e)) from None


def check_resumable(step_dir: Path) -> None:
    """Nothing if a run can continue from the newest checkpoint `step_dir`; else a one-line CheckpointError.

    A newest checkpoint damaged on disk (a truncated or garbage file: the atomic writes cannot leave one, so
    the disk or filesystem failed, or someone edited it) is not skipped: the error names the damage and the
    newest intact earlier checkpoint, and says to move the damaged directory aside (to damaged-step-N, which
    is no checkpoint name) and run the same command again, which then resumes from that one. Falling back on
    its own would bury a failing disk in a log line, and the run's next saves would replace the damaged
    directory or prune intact ones around it: here nothing is deleted or overwritten without a person."""
    damage = checkpoint_damage(step_dir)
    if damage is None:
        return
    step_dir = Path(step_dir)
    earlier = list_checkpoints(step_dir.parent)[:-1]
    intact = next((c for c in reversed(earlier) if checkpoint_damage(c) is None), None)
    if intact is None:
        raise CheckpointError(f"cannot resume: {damage}; no earlier checkpoint in {step_dir.parent} is intact: "
                              "choose another train.out_dir to start afresh")
    raise CheckpointError(f"cannot resume: {damage}; the newest intact checkpoint is {intact.name}: move the damaged "
                          f"one aside (mv {step_dir} {step_dir.with_name('damaged-' + step_dir.name)}) and run the "
                          f"same command again to resume from {intact.name}")


def checkpoint_damage(step_dir: Path) -> str | None:
    """What makes a step directory unusable for a resume (the first file that is missing or unreadable:
    config.yaml, tokenizer.json, trainer_state.json with this directory's step, the safetensors headers), or
    None. Reads no tensor data: cheap enough for every earlier checkpoint."""
    step_dir = Path(step_dir)
    try:
        read_config(step_dir)
        for name in (MODEL_FILE, OPTIMIZER_FILE):
            read_safetensors(step_dir / name, header_only=True)
        state = read_json(step_dir / STATE_FILE)
    except CheckpointError as e:
        return str(e)
    try:
        Tokenizer.from_file(str(step_dir / TOKENIZER_FILE))
    except Exception as e:  # tokenizers raises plain Exception subclasses for missing and malformed files
        return f"{step_dir / TOKENIZER_FILE}: not a readable tokenizer ({str(e).splitlines()[0][:160]})"
    train_state = state.get("train_state") if isinstance(state, dict) else None
    numbers = isinstance(train_state, dict) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in train_state.values())
    if not numbers or train_state.get("step") != int(step_dir.name[len(STEP_PREFIX):]) \
            or not isinstance(state.get("param_groups"), list):
        return (f"{step_dir / STATE_FILE}: not the trainer state of {step_dir.name} (expected train_state with "
                "numbers, its step that of the directory, and param_groups)")
    return None
