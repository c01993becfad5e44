#!/usr/bin/env bash
# A long file as a Slurm job array (docs/segments.md): one array task per
# segment, one GPU each, on a shared file system; then one join.
#
#   flashvsr-upscale plan in.mp4 --work /shared/job --segments 16 \
#     --set model-dir=/models/FlashVSR-v1.1 --set device=cuda:0 --set precision=bf16
#   jobid=$(sbatch --parsable --array=0-15 pipelines/slurm-segments.sh /shared/job)
#   sbatch --dependency=afterok:$jobid --wrap "flashvsr-upscale join /shared/job out.mp4"
#
# Slurm places and requeues the tasks; flashvsr-upscale maps
# SLURM_ARRAY_TASK_ID to a segment and skips segments already finished, so
# resubmitting the array redoes only what is missing.
#SBATCH --job-name=flashvsr-segments
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --requeue
#SBATCH --output=flashvsr-%A_%a.log
set -euo pipefail
work=${1:?usage: sbatch --array=0-N-1 slurm-segments.sh WORK_DIR}
exec flashvsr-upscale run "$work"
