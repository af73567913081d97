#!/usr/bin/env bash
# BERT-base from scratch on English Wikipedia (configs/base_wikipedia.yaml: the BERT paper's recipe, MLM only)
# on one or more CUDA GPUs of this machine, through torchrun (DDP; NCCL between GPUs).
#
#   NEEDS INTERNET: the first run downloads wikimedia/wikipedia (20231101.en) from the Hugging Face Hub with
#   `datasets`, trains a 30,522-token WordPiece vocabulary on it and tokenises it (rank 0, once; the others
#   wait), caching everything for later runs. Tens of GB of disk: see the config's header.
#   NEEDS A GPU: train.device is cuda; without one the run stops at once with a one-line error.
#
#   scripts/pretrain_base_gpu.sh                                        # 1 GPU
#   GPUS=8 scripts/pretrain_base_gpu.sh                                 # 8 GPUs
#   GPUS=8 scripts/pretrain_base_gpu.sh --set train.max_time_minutes=600   # extra args go to `bertmath pretrain`
#   GPUS=4 GLOBAL_BATCH=512 scripts/pretrain_base_gpu.sh --set train.lr=2e-4
#
# Environment: GPUS (processes = GPUs, default 1), GLOBAL_BATCH (sequences per optimizer step, default 256 as in
# the paper), MICRO_BATCH (sequences per GPU per forward pass, default min(128, GLOBAL_BATCH / GPUS)),
# CONFIG (default configs/base_wikipedia.yaml), TORCHRUN (the launcher command, default torchrun),
# PYTHON (the interpreter that checks the GPU count, default python).
# GLOBAL_BATCH = MICRO_BATCH × accumulation steps × GPUS; the script derives the accumulation steps. A step
# reads the same blocks whatever the split, so a run may be resumed with a different GPUS.
# Re-running the same command resumes from the latest checkpoint in train.out_dir (checkpoints/base_wikipedia).
# Afterwards: bertmath fill-mask checkpoints/base_wikipedia "The capital of France is [MASK]."
#             bertmath export checkpoints/base_wikipedia hf-bert-base   # transformers' layout
set -euo pipefail

cd "$(dirname "$0")/.."
gpus=${GPUS:-1}
global_batch=${GLOBAL_BATCH:-256}
config=${CONFIG:-configs/base_wikipedia.yaml}
read -ra torchrun <<< "${TORCHRUN:-torchrun}"  # e.g. TORCHRUN="python -m torch.distributed.run"

if (( gpus < 1 || global_batch % gpus != 0 )); then
  echo "pretrain_base_gpu.sh: GLOBAL_BATCH ($global_batch) must be a multiple of GPUS ($gpus)" >&2
  exit 2
fi
per_gpu=$(( global_batch / gpus ))
micro_batch=${MICRO_BATCH:-$(( per_gpu < 128 ? per_gpu : 128 ))}
if (( micro_batch < 1 || per_gpu % micro_batch != 0 )); then
  echo "pretrain_base_gpu.sh: GLOBAL_BATCH / GPUS ($per_gpu) must be a multiple of MICRO_BATCH ($micro_batch)" >&2
  exit 2
fi
accum=$(( per_gpu / micro_batch ))
found=$("${PYTHON:-python}" -c "import torch; print(torch.cuda.device_count())")
if (( found < gpus )); then
  echo "pretrain_base_gpu.sh: GPUS=$gpus but torch sees $found CUDA GPU(s); this recipe needs GPUs" \
       "(on a CPU, try scripts/pretrain_small_cpu.sh)" >&2
  exit 1
fi
echo "pretrain_base_gpu.sh: $gpus GPU(s) × $micro_batch sequences × $accum accumulation steps" \
     "= $global_batch sequences per step" >&2

exec "${torchrun[@]}" --standalone --nproc_per_node "$gpus" -m bertmath pretrain "$config" \
  --set train.batch_size="$micro_batch" --set train.grad_accum_steps="$accum" "$@"
