#!/usr/bin/env bash
# The three stages end to end on CIFAR-10 in a few minutes on a laptop CPU: a victim (ResNet-18, CIFAR stem) trained
# for a minute, a StyleGAN2 prior trained for a few minutes on the other half of the training set, then PFO against
# the victim's `conv1` features of 8 test images, with GLASS (the same prior, latent only) and rMLE (pixels) beside
# it. The victim and the prior are weak and the split is the shallowest there is: the demo shows the pipeline and
# what a reconstruction looks like, not how PFO fares at depth (see the README for the full-scale commands).
#
# Data: $PFO_DATA_ROOT/cifar10 or data/cifar10 (torchvision's format or class folders); where the network allows,
# PFO_DOWNLOAD=1 fetches torchvision's copy into data/cifar10 first.
# LPIPS: reported when AlexNet weights are found: torchvision's cache, or the file PFO_LPIPS_WEIGHTS names.
# Knobs: PFO_DEMO_SCALE=full (default) or test (a few steps of everything, for the test suite); PFO_DEMO_LOGS
# (default logs) is where the run folders go. Each run of the script starts its demo_* run folders afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
scale=${PFO_DEMO_SCALE:-full}
logs=${PFO_DEMO_LOGS:-logs}
split=conv1

case "$scale" in
  full)
    victim_budget=(--trainer.max_epochs 2 --trainer.limit_train_batches 20 --model.init_args.progressive_resizing
      '[[1, 16]]')
    prior_budget=(--trainer.max_steps 200 --model.init_args.sample_every_n_steps 100)
    targets=(--data.count 8 --data.batch_size 8)
    pfo_budget=()  # the attack configs' own budgets: 500 steps per target each
    glass_budget=()
    rmle_budget=()
    ;;
  test)
    victim_budget=(--trainer.max_epochs 1 --trainer.limit_train_batches 2 --data.init_args.batch_size 8
      --model.init_args.progressive_resizing '[]')
    prior_budget=(--trainer.max_steps 2 --data.init_args.batch_size 4 --model.init_args.sample_every_n_steps 2
      --model.init_args.sample_grid 2)
    targets=(--data.count 2 --data.batch_size 2)
    pfo_budget=(--model.init_args.steps '[2, 1, 1, 1]' --model.init_args.n_init 2 --model.init_args.init_chunk 2)
    glass_budget=(--model.init_args.short_steps 1 --model.init_args.steps 2 --model.init_args.n_init 2
      --model.init_args.init_chunk 2 --model.init_args.candidates 1)
    rmle_budget=(--model.init_args.steps 2)
    ;;
  *)
    echo "error: PFO_DEMO_SCALE must be full or test, got '$scale'" >&2
    exit 2
    ;;
esac

download=()
[ "${PFO_DOWNLOAD:-0}" = 1 ] && download=(--data.init_args.download true)
lpips=()
if [ -n "${PFO_LPIPS_WEIGHTS:-}" ]; then
  lpips=(--model.init_args.lpips_weights "$PFO_LPIPS_WEIGHTS")
fi
quiet=(--trainer.enable_progress_bar false --trainer.enable_model_summary false)
# every stage decodes only the images it uses (not the whole split up front); the victim is not validated (a few
# test batches would all be airplanes: the test split is sorted by class), so its file records no accuracy
no_cache=(--data.init_args.cache false)
run_names=(demo_victim demo_prior demo_pfo demo_glass demo_rmle)

echo "demo ($scale scale): run folders $logs/demo_*, started afresh"
for name in "${run_names[@]}"; do rm -rf "${logs:?}/$name"; done
rm -f "$logs/demo_comparison.png"
start=$SECONDS
stage() { echo; echo "== $1  [$((SECONDS - start)) s]"; }

stage "stage 1: victim (ResNet-18, CIFAR stem) on the private half of CIFAR-10"
$python train.py fit --config configs/victim_cifar10_resnet18.yaml "${download[@]}" "${no_cache[@]}" \
  "${victim_budget[@]}" --data.init_args.val_split null "${quiet[@]}" \
  --trainer.logger.init_args.save_dir "$logs" --trainer.logger.init_args.name demo_victim

stage "stage 2: StyleGAN2 prior on the public half of CIFAR-10"
$python train.py fit --config configs/gan_cifar10.yaml "${no_cache[@]}" "${prior_budget[@]}" \
  --trainer.max_time null "${quiet[@]}" \
  --trainer.logger.init_args.save_dir "$logs" --trainer.logger.init_args.name demo_prior

attack() {  # attack <config> <run name> <budget...>: one attack on the victim's $split features of the test targets
  local config=$1 name=$2
  shift 2
  $python attack.py --config "configs/$config" "$@" "${targets[@]}" "${lpips[@]}" \
    --model.init_args.victim "$logs/demo_victim/victim.pt" --model.init_args.split_point "$split" \
    --model.init_args.progress false --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir "$logs" --trainer.logger.init_args.name "$name"
}

stage "stage 3: PFO against the victim's $split features of CIFAR-10 test images"
attack pfo_resnet.yaml demo_pfo "${pfo_budget[@]}" --model.init_args.generator "$logs/demo_prior/generator.pt"
stage "stage 3, baselines on the same targets: GLASS (same prior, latent only) and rMLE (pixels)"
attack glass_resnet.yaml demo_glass "${glass_budget[@]}" --model.init_args.generator "$logs/demo_prior/generator.pt"
attack rmle_resnet.yaml demo_rmle "${rmle_budget[@]}"

stage "results"
$python -m pfo.report PFO="$logs/demo_pfo" GLASS="$logs/demo_glass" rMLE="$logs/demo_rmle" \
  --figure "$logs/demo_comparison.png"
echo
echo "Where everything went ($((SECONDS - start)) s in all):"
echo "  victim file:      $logs/demo_victim/victim.pt"
echo "  prior:            $logs/demo_prior/generator.pt (samples in $logs/demo_prior/samples/)"
echo "  reconstructions:  $logs/demo_pfo/ (comparison.png, metrics.csv, summary.json, images/); $logs/demo_glass/, $logs/demo_rmle/"
echo "  side by side:     $logs/demo_comparison.png (originals, then PFO, GLASS and rMLE)"
echo "  TensorBoard:      tensorboard --logdir $logs"
