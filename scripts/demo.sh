#!/usr/bin/env bash
# The three stages end to end on CIFAR-10 at a small scale (a few minutes on a laptop CPU): a victim trained for a
# few hundred images, a prior trained for a few hundred steps, and PFO on 8 test images. The results are weak by
# design (tiny budgets); the full-scale commands are in the README.
#
# Data: $PFO_DATA_ROOT/cifar10 or data/cifar10 (torchvision's format or class folders). Where the network allows,
# PFO_DOWNLOAD=1 fetches torchvision's copy into data/cifar10 first.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
download=${PFO_DOWNLOAD:-0}
dl_flag=()
[ "$download" = 1 ] && dl_flag=(--data.init_args.download true)

echo "== stage 1: victim (ResNet-18, CIFAR stem) on the private half of CIFAR-10"
$python train.py fit --config configs/victim_cifar10_resnet18.yaml "${dl_flag[@]}" \
  --trainer.max_epochs 1 --trainer.limit_train_batches 8 --trainer.limit_val_batches 4 \
  --trainer.check_val_every_n_epoch 1 --model.init_args.low_res_epochs 0 \
  --trainer.logger.init_args.name demo_victim

echo "== stage 2: StyleGAN2 prior on the public half of CIFAR-10"
$python train.py fit --config configs/gan_cifar10.yaml \
  --trainer.max_steps 40 --trainer.max_time null --model.init_args.sample_every_n_steps 20 \
  --trainer.logger.init_args.name demo_prior

echo "== stage 3: PFO against the victim's layer2 features, 8 test images"
$python attack.py --config configs/pfo_resnet.yaml \
  --model.init_args.victim logs/demo_victim/victim.pt --model.init_args.generator logs/demo_prior/generator.pt \
  --model.init_args.steps '[20, 10, 10, 10]' --model.init_args.n_init 16 \
  --data.count 8 --data.batch_size 8 --trainer.logger.init_args.name demo_attack

echo
echo "Results:"
echo "  victim file:       logs/demo_victim/victim.pt"
echo "  prior:             logs/demo_prior/generator.pt (samples in logs/demo_prior/samples/)"
echo "  reconstructions:   logs/demo_attack/ (comparison.png, metrics.csv, summary.json, images/)"
echo "  TensorBoard:       tensorboard --logdir logs"
