#!/usr/bin/env bash
# One prepared call on a GPU machine (issue 15, item 4): train the CIFAR-10 victim from its config and the two
# CIFAR-10 priors (the public CIFAR-10 half: in distribution; Tiny-ImageNet: out of distribution) far longer than two
# CPU cores can, side by side on the one GPU, then run the benchmark's attacks with them on the same 16 targets.
# SETTING=faces does the same for the 64-px faces: the ImageNet-stem LFW victim, the LFW prior on the public people
# (in distribution), and the pretrained DigiFace prior (out of distribution, its weights carried in $WEIGHTS).
# Everything it makes is packed into $PACK for the trip back (bench/device_pack.py): the victim, both priors, every
# attack run (LPIPS is added back home, where the AlexNet weights are: bench/rescore_lpips.py).
#
#   python bench/pack_device_data.py --source ../shared/data --bundle .carry/data.bundle   # CPU machine, once
#   bash bench/gpu_strong_priors.sh                                                        # GPU machine
#   python bench/device_pack.py unpack <files back> --dest logs/gpu                       # CPU machine
# The faces (45 MiB to carry):
#   python bench/pack_device_data.py --lfw --no_cifar10 --tinyimagenet 0 && mkdir -p .carry/weights && \
#       cp ../shared/weights/digiface_dcgan64_weights.tar .carry/weights/
#   SETTING=faces WORK=logs/gpu_faces bash bench/gpu_strong_priors.sh
#
# Knobs (environment): SETTING (cifar10 or faces), WEIGHTS (.carry/weights: the pretrained priors' weights, the
# call's PFO_PRIOR_CACHE, when that folder exists), NAMED_PRIORS (the pretrained priors, name=pretrained name;
# faces: digiface=digiface-dcgan64), PYTHON (python3), BUNDLE (.carry/data.bundle; empty: use $PFO_DATA_ROOT as it
# is), WORK (logs/gpu), PACK ($OUT, else $WORK/pack), PRIOR_TIME (each prior's Lightning max_time, 00:00:05:00),
# PRIOR_BATCH (64, NVlabs' CIFAR-10 batch), VICTIM_ARGS and PRIOR_ARGS (more train.py options), PLAIN_ATTACKS (the
# rows without a prior, run on every split point as soon as the victim is trained, while the priors train),
# PRIOR_ATTACKS (on SPLITS, then ENCODER_ATTACKS on ENCODER_SPLITS, then PRIOR_ATTACKS on MORE_SPLITS, each only
# while time is left), BENCH_ARGS, JOBS (8), DEADLINE (seconds after the start by which packing begins, 510), TRAIN
# (1; 0: the victim and priors are already in $WORK, from an earlier call: attack only, and bring back only the runs).
# Issue 16's guided rows read IN's decoders, which the plain rows train (put `in` in PLAIN_ATTACKS): GUIDE_ATTACKS
# run on GUIDE_SPLITS once those are done. RULE is every row's --radius_rule (cifar10:
# bench/rules/cifar10_resnet18.yaml, the radii and the guide's weights chosen on public images; empty: none).
# Where BLEND_GRID is set, the blend's fraction is first chosen on public images at each of GUIDE_SPLITS, side by
# side (bench/calibrate_radius.py --option guide_blend with the first trained prior; CALIBRATE_COUNT images, 8;
# CALIBRATE_ARGS, more of the attack's options: the guided row's schedule), and added to RULE in
# $WORK/radius_rule.yaml. TRAINED_PRIORS (the setting's) names the priors to train and attack with. An issue-16 call:
#   PLAIN_ATTACKS="rmle lm in" PRIOR_ATTACKS="pfo glass pfo_radius" ENCODER_ATTACKS="pfo_encoder pfo_all" \
#   GUIDE_ATTACKS="pfo_radius_guide pfo_radius_guide_blend" GUIDE_SPLITS="layer4 layer3 layer2" \
#   BLEND_GRID="0 0.25 0.5 0.75" bash bench/gpu_strong_priors.sh
set -uo pipefail
START=$SECONDS
SETTING=${SETTING:-cifar10}
case "$SETTING" in
  cifar10) VICTIM_NAME=victim_cifar10_resnet18 DEFAULT_TRAINED="cifar10 tinyimagenet" DEFAULT_NAMED=""
    DEFAULT_MORE="layer1 conv1" DEFAULT_ENCODER=pfo_encoder DEFAULT_RULE=bench/rules/cifar10_resnet18.yaml ;;
  faces) VICTIM_NAME=victim_lfw_resnet18 DEFAULT_TRAINED="lfw" DEFAULT_NAMED="digiface=digiface-dcgan64"
    DEFAULT_MORE="" DEFAULT_ENCODER="" DEFAULT_RULE="" ;;
  *) echo "SETTING is cifar10 or faces, not '$SETTING'" >&2; exit 2 ;;
esac
TRAINED_PRIORS=${TRAINED_PRIORS:-$DEFAULT_TRAINED}
NAMED_PRIORS=${NAMED_PRIORS-$DEFAULT_NAMED}
WEIGHTS=${WEIGHTS:-.carry/weights}
[ -d "$WEIGHTS" ] && export PFO_PRIOR_CACHE="$WEIGHTS"
PYTHON=${PYTHON:-python3}
WORK=${WORK:-logs/gpu}
PACK=${PACK:-${OUT:-$WORK/pack}}
PRIOR_TIME=${PRIOR_TIME:-00:00:05:00}
PRIOR_BATCH=${PRIOR_BATCH:-64}
VICTIM_ARGS=${VICTIM_ARGS:-}
PRIOR_ARGS=${PRIOR_ARGS:-}
SPLITS=${SPLITS:-layer4 layer3 layer2}
MORE_SPLITS=${MORE_SPLITS-$DEFAULT_MORE}
TRAIN=${TRAIN:-1}
PLAIN_ATTACKS=${PLAIN_ATTACKS-rmle lm}
PRIOR_ATTACKS=${PRIOR_ATTACKS:-pfo glass pfo_pixel}
ENCODER_ATTACKS=${ENCODER_ATTACKS-$DEFAULT_ENCODER}
ENCODER_SPLITS=${ENCODER_SPLITS:-layer4}
BENCH_ARGS=${BENCH_ARGS:---targets 16 --steps 500 --noise 0}
RULE=${RULE-$DEFAULT_RULE}
GUIDE_ATTACKS=${GUIDE_ATTACKS:-}
GUIDE_SPLITS=${GUIDE_SPLITS:-layer4 layer3}
BLEND_GRID=${BLEND_GRID:-}
CALIBRATE_COUNT=${CALIBRATE_COUNT:-8}
CALIBRATE_ARGS=${CALIBRATE_ARGS:---model.init_args.steps [200,100,100,100]}
JOBS=${JOBS:-8}
DEADLINE=${DEADLINE:-510}
BUNDLE=${BUNDLE-.carry/data.bundle}
mkdir -p "$WORK" "$PACK"
LOG="$PACK/log.txt"
say() { echo "[$((SECONDS - START)) s] $*" | tee -a "$LOG"; }

say "start $(date -u +%FT%TZ) on $(hostname), setting $SETTING"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1 || say "no nvidia-smi"
"$PYTHON" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" >>"$LOG" 2>&1
if [ -n "$BUNDLE" ]; then
  export PFO_DATA_ROOT="$WORK/data"
  "$PYTHON" bench/pack_device_data.py --unpack "$BUNDLE" --dest "$PFO_DATA_ROOT" >>"$LOG" 2>&1 || say "unpack failed"
fi

# 1. The victim and the priors, side by side (each its own process; the GPU has room for all three).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1
train() {  # name config args...
  local name=$1 config=$2; shift 2
  say "train $name"
  "$PYTHON" train.py fit --config "$config" --trainer.logger.init_args.save_dir "$WORK" "$@" >"$WORK/$name.log" 2>&1
  say "train $name: exit $?"
}
# shellcheck disable=SC2086  # the *_ARGS knobs are lists of options
VICTIM_PID=() PRIOR_PIDS=()
[ "$TRAIN" = 1 ] && { train victim "configs/$VICTIM_NAME.yaml" $VICTIM_ARGS & VICTIM_PID=($!); }
for prior in $TRAINED_PRIORS; do
  [ "$TRAIN" = 1 ] || break
  # shellcheck disable=SC2086
  train "gan_$prior" "configs/gan_$prior.yaml" --trainer.max_steps 1000000 --trainer.max_time "$PRIOR_TIME" \
    --data.init_args.batch_size "$PRIOR_BATCH" $PRIOR_ARGS &
  PRIOR_PIDS+=($!)
done
VICTIM="$WORK/$VICTIM_NAME/victim.pt"
PRIORS=() NAMES=()  # the files (--prior) and the rows (--priors: only these, not every prior of the setting)
for prior in $TRAINED_PRIORS; do PRIORS+=(--prior "$prior=$WORK/gan_$prior/generator.pt") NAMES+=("$prior"); done
for prior in $NAMED_PRIORS; do PRIORS+=(--prior "$prior") NAMES+=("${prior%%=*}"); done
PRIORS+=(--priors "${NAMES[@]}")

# 2. The benchmark: the attacks without a prior as soon as the victim exists, the ones with a prior once the priors do.
#    A benchmark cut short by the deadline keeps every finished cell (each run folder is tabulated on its own).
bench() {  # jobs attacks splits...  (attacks: one word, space-separated names quoted)
  local jobs=$1 attacks=$2; shift 2
  local seconds=$((DEADLINE - (SECONDS - START)))
  [ -n "$attacks" ] || return 0
  if [ "$seconds" -lt 30 ]; then say "no time left for $attacks at $*"; return; fi
  say "benchmark $attacks at $* (up to $seconds s)"
  # shellcheck disable=SC2086
  timeout -k 10 "$seconds" "$PYTHON" bench/benchmark.py --setting "$SETTING" --victim "$VICTIM" "${PRIORS[@]}" \
    --splits "$@" ${RULE:+--radius_rule "$RULE"} \
    --attacks $attacks $BENCH_ARGS --jobs "$jobs" --out "$WORK/bench" --cache "$WORK/bench_cache" \
    >>"$WORK/bench.log" 2>&1
  say "benchmark $attacks at $*: exit $?"
}
[ ${#VICTIM_PID[@]} -eq 0 ] || wait "${VICTIM_PID[@]}"  # (a bare `wait` would wait for every job)
[ "$TRAIN" = 1 ] && grep -h -o -E "val/accuracy=[0-9.]+" "$WORK/victim.log" | tail -n 1 >>"$LOG"
# shellcheck disable=SC2086
bench 4 "$PLAIN_ATTACKS" $SPLITS $MORE_SPLITS &
PLAIN_PID=$!
[ ${#PRIOR_PIDS[@]} -eq 0 ] || wait "${PRIOR_PIDS[@]}"
# shellcheck disable=SC2086
bench "$JOBS" "$PRIOR_ATTACKS" $SPLITS
# shellcheck disable=SC2086
[ -n "$ENCODER_ATTACKS" ] && bench "$JOBS" "$ENCODER_ATTACKS" $ENCODER_SPLITS
# shellcheck disable=SC2086
[ -n "$MORE_SPLITS" ] && bench "$JOBS" "$PRIOR_ATTACKS" $MORE_SPLITS
wait "$PLAIN_PID"

# 3. The rows guided by IN's decoders (trained by the plain rows above), after the blend's calibration on public
#    images at each split point, side by side (a split point without a decoder or a choice keeps RULE's entry).
calibrate_blend() {  # split
  local split=$1 decoder seconds=$((DEADLINE - (SECONDS - START)))
  decoder=$(ls "$WORK"/bench_cache/decoder_"$split"_noise0_*/decoder.pt 2>/dev/null | head -n 1)
  if [ -z "$decoder" ] || [ "$seconds" -lt 30 ]; then
    say "no blend calibration at $split (decoder '$decoder', $seconds s left)"
    return
  fi
  say "calibrate guide_blend at $split (up to $seconds s)"
  # shellcheck disable=SC2086  # the grid and CALIBRATE_ARGS are lists
  timeout -k 10 "$seconds" "$PYTHON" bench/calibrate_radius.py --config configs/pfo_extended_resnet.yaml \
    --option guide_blend --grid $BLEND_GRID --split_points "$split" --count "$CALIBRATE_COUNT" \
    --batch_size "$CALIBRATE_COUNT" --rule "$RULE" --out "$WORK/calibration_blend_$split" -- \
    --model.init_args.victim "$VICTIM" --model.init_args.generator "$WORK/gan_${FIRST_PRIOR}/generator.pt" \
    --model.init_args.guide "$decoder" --model.init_args.pixel_stage false --model.init_args.lr 0.05 $CALIBRATE_ARGS \
    >"$WORK/calibration_blend_$split.log" 2>&1
  say "calibrate guide_blend at $split: exit $?"
}
FIRST_PRIOR=${TRAINED_PRIORS%% *}
if [ -n "$GUIDE_ATTACKS" ] && [ -n "$BLEND_GRID" ]; then
  CALIBRATIONS=()
  for split in $GUIDE_SPLITS; do calibrate_blend "$split" & CALIBRATIONS+=($!); done
  [ ${#CALIBRATIONS[@]} -eq 0 ] || wait "${CALIBRATIONS[@]}"
  "$PYTHON" - "$RULE" "$WORK" <<'MERGE' >>"$LOG" 2>&1
import pathlib, sys, yaml  # RULE plus each calibration's guide_blend at its split point
rule = yaml.safe_load(open(sys.argv[1]))["radius_rule"]
for path in sorted(pathlib.Path(sys.argv[2]).glob("calibration_blend_*/radius_rule.yaml")):
    for split, entry in yaml.safe_load(open(path))["radius_rule"].items():
        if isinstance(entry, dict) and "guide_blend" in entry:
            rule[split] = {**rule.get(split, {}), "guide_blend": entry["guide_blend"]}
text = yaml.safe_dump({"radius_rule": rule}, default_flow_style=None, sort_keys=False)
(pathlib.Path(sys.argv[2]) / "radius_rule.yaml").write_text(text)
print("the rule of the guided rows:", rule)
MERGE
  [ -s "$WORK/radius_rule.yaml" ] && RULE="$WORK/radius_rule.yaml"
fi
# shellcheck disable=SC2086
[ -n "$GUIDE_ATTACKS" ] && bench "$JOBS" "$GUIDE_ATTACKS" $GUIDE_SPLITS

# 4. Pack for the trip back.
say "pack"
PACK_ARGS=()
[ "$TRAIN" = 1 ] || PACK_ARGS=(--runs_only)  # the victim and priors are already at home
"$PYTHON" bench/device_pack.py pack "$WORK" --out "$PACK" "${PACK_ARGS[@]}" >>"$LOG" 2>&1 || say "pack failed"
tail -n 40 "$WORK/bench.log" >>"$LOG" 2>/dev/null
say "done"
