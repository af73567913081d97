#!/usr/bin/env bash
# BERT-base from scratch on English Wikipedia (configs/base_wikipedia.yaml: the BERT paper's recipe, MLM only)
# on the CUDA GPUs of one or more machines, through torchrun (DDP or FSDP2; NCCL between GPUs).
#
#   NEEDS INTERNET: the first run downloads wikimedia/wikipedia (20231101.en) from the Hugging Face Hub with
#   `datasets`, trains a 30,522-token WordPiece vocabulary on it and tokenises it (rank 0, once; the others
#   wait), caching everything for later runs. Tens of GB of disk: see the config's header.
#   NEEDS A GPU: train.device is cuda; without one the run stops at once with a one-line error.
#
#   scripts/pretrain_base_gpu.sh                                        # 1 GPU
#   GPUS=8 scripts/pretrain_base_gpu.sh                                 # 8 GPUs of this machine, DDP
#   GPUS=8 PARALLEL=fsdp scripts/pretrain_base_gpu.sh                   # the same with FSDP2 (sharded weights)
#   GPUS=8 scripts/pretrain_base_gpu.sh --set train.max_time_minutes=600   # extra args go to `bertmath pretrain`
#   GPUS=4 GLOBAL_BATCH=512 scripts/pretrain_base_gpu.sh --set train.lr=2e-4
#   # 2 machines × 8 GPUs: run on each, with its NODE_RANK (0 and 1) and the address of node 0
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 scripts/pretrain_base_gpu.sh
#
# Environment: GPUS (processes per machine = its GPUs, default 1), NNODES (machines, default 1), NODE_RANK and
# MASTER_ADDR[:MASTER_PORT, default 29500] (multi-node only), PARALLEL (ddp or fsdp, default ddp), GLOBAL_BATCH
# (sequences per optimizer step over all GPUs, default 256 as in the paper), MICRO_BATCH (sequences per GPU
# per forward pass, default min(128, GLOBAL_BATCH / all GPUs)), CONFIG (default configs/base_wikipedia.yaml),
# TORCHRUN (the launcher command, default torchrun), PYTHON (the interpreter that checks the GPU count).
# GLOBAL_BATCH = MICRO_BATCH × all GPUs × accumulation steps; the script derives train.batch_size (the batch of
# all GPUs together) and the accumulation steps. A step reads the same blocks with the same masks whatever
# the split, so a run may be resumed on another number of GPUs (only the dropout draws then differ).
# Multi-node: train.out_dir must be on a filesystem all machines share (rank 0 writes, every rank resumes).
# Re-running the same command resumes from the latest checkpoint in train.out_dir (checkpoints/base_wikipedia).
# Afterwards: bertmath fill-mask checkpoints/base_wikipedia "The capital of France is [MASK]."
#             bertmath export checkpoints/base_wikipedia hf-bert-base   # transformers' layout
set -euo pipefail

cd "$(dirname "$0")/.."
gpus=${GPUS:-1}
nodes=${NNODES:-1}
parallel=${PARALLEL:-ddp}
global_batch=${GLOBAL_BATCH:-256}
config=${CONFIG:-configs/base_wikipedia.yaml}
read -ra torchrun <<< "${TORCHRUN:-torchrun}"  # e.g. TORCHRUN="python -m torch.distributed.run"

if [[ $parallel != ddp && $parallel != fsdp ]]; then
  echo "pretrain_base_gpu.sh: PARALLEL must be ddp or fsdp, got '$parallel'" >&2
  exit 2
fi
processes=$(( gpus * nodes ))
if (( gpus < 1 || nodes < 1 || global_batch % processes != 0 )); then
  echo "pretrain_base_gpu.sh: GLOBAL_BATCH ($global_batch) must be a multiple of GPUS × NNODES ($processes)" >&2
  exit 2
fi
per_gpu=$(( global_batch / processes ))
micro_batch=${MICRO_BATCH:-$(( per_gpu < 128 ? per_gpu : 128 ))}
if (( micro_batch < 1 || per_gpu % micro_batch != 0 )); then
  echo "pretrain_base_gpu.sh: GLOBAL_BATCH / all GPUs ($per_gpu) must be a multiple of MICRO_BATCH ($micro_batch)" >&2
  exit 2
fi
accum=$(( per_gpu / micro_batch ))
found=$("${PYTHON:-python}" -c "import torch; print(torch.cuda.device_count())")
if (( found < gpus )); then
  echo "pretrain_base_gpu.sh: GPUS=$gpus but torch sees $found CUDA GPU(s); this recipe needs GPUs" \
       "(on a CPU, try scripts/pretrain_small_cpu.sh)" >&2
  exit 1
fi
if (( nodes == 1 )); then
  launch=(--standalone --nproc_per_node "$gpus")
else
  if [[ -z ${NODE_RANK:-} || -z ${MASTER_ADDR:-} ]]; then
    echo "pretrain_base_gpu.sh: NNODES=$nodes needs NODE_RANK (0..$(( nodes - 1 ))) and MASTER_ADDR (node 0's address)" >&2
    exit 2
  fi
  launch=(--nnodes "$nodes" --node_rank "$NODE_RANK" --nproc_per_node "$gpus" --rdzv_backend c10d
          --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id bertmath-base)
fi
echo "pretrain_base_gpu.sh: $nodes machine(s) × $gpus GPU(s) × $micro_batch sequences × $accum accumulation steps" \
     "= $global_batch sequences per step ($parallel)" >&2

exec "${torchrun[@]}" "${launch[@]}" -m bertmath pretrain "$config" \
  --set train.batch_size="$(( micro_batch * processes ))" --set train.grad_accum_steps="$accum" \
  --set train.parallel="$parallel" "$@"
