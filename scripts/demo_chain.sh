#!/usr/bin/env bash
# Trains the bundled demo models (assets/models/{teacher,sfvr,vanilla}) in resumable parts.
#
#   scripts/demo_chain.sh PART [PART ...]
#
# PART: teacher | teacher2 | stage1 | sfvr | vanilla | sfvr3 | vanilla3 | sfvr3b | vanilla3b |
#       sfvr3c | vanilla3c | sfvr3d | vanilla3d | sfvr3e | vanilla3e | bundle | eval
# (teacher2: the teacher continued from `teacher` with --init at a lower learning rate; the
#  bundled teacher. TEACHER_RUN=teacher2 makes stage 1 learn its codes; the bundled token models
#  of 2026-12-02 were trained against `teacher`, the default)
# (sfvr3 / vanilla3: stage 3, the pixel-space fine-tuning of each; sfvr3b / vanilla3b: stage 3
#  continued from them for 1500 more steps, which is what is bundled since the fourth session of
#  2026-12-02; sfvr3c / vanilla3c: stage 3 continued again, from the bundled models, at a higher
#  learning rate (5e-4) for 3000 steps, 2026-12-07; sfvr and vanilla themselves, before stage 3,
#  are what docs/experiments.md compares; sfvr3d / vanilla3d: stage 3 continued from 3c (or the
#  bundled models) with the encoder frozen, as the paper trains stage 3, so that the latent tokens,
#  and the demo generator trained on them, stay as they are; tried for SFVR on 2026-12-07: +0.03 dB
#  in 2500 steps, not bundled (docs/token_stages.md); sfvr3e / vanilla3e: end to end again, from
#  3c (or the bundled models), for 5000 steps at 5e-4, fourth session of 2026-12-07; `bundle`
#  takes the latest of 3e, 3d, 3c that is there)
# Each training part resumes its run when the run folder already holds checkpoints, so a part
# cut short (a session's time limit, Ctrl-C) is continued by running the same command again.
# `bundle` copies the finished models into assets/models/; `eval` writes docs/eval.{md,json,png}.
#
# Environment: DATA, EVAL, RUNS, DEVICE, SFTOK (scripts/common.sh), and the step counts below.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
source scripts/common.sh

# The lengths of the bundled chain (steps at batch 16). The token stages use the small-model
# defaults of `sftok train` (learning rate 1e-3, soft-embedding loss; see docs/token_stages.md).
TEACHER_STEPS=${TEACHER_STEPS:-3000}
TEACHER2_STEPS=${TEACHER2_STEPS:-4000}
TEACHER_RUN=${TEACHER_RUN:-teacher}
STAGE1_STEPS=${STAGE1_STEPS:-3500}
STAGE2_STEPS=${STAGE2_STEPS:-300}
STAGE3_STEPS=${STAGE3_STEPS:-400}
STAGE3B_STEPS=${STAGE3B_STEPS:-1500}
STAGE3C_STEPS=${STAGE3C_STEPS:-3000}
STAGE3C_LR=${STAGE3C_LR:-5e-4}
STAGE3D_STEPS=${STAGE3D_STEPS:-2500}
STAGE3D_LR=${STAGE3D_LR:-3e-4}
STAGE3E_STEPS=${STAGE3E_STEPS:-5000}
STAGE3E_LR=${STAGE3E_LR:-5e-4}

for part in "$@"; do
  case $part in
    teacher)
      train "$RUNS/teacher" teacher --preset demo --steps "$TEACHER_STEPS"
      ;;
    teacher2)
      train "$RUNS/teacher2" teacher --init "$RUNS/teacher" --steps "$TEACHER2_STEPS" --lr 1e-4
      ;;
    stage1)
      train "$RUNS/stage1" stage1 --preset demo --teacher "$RUNS/$TEACHER_RUN" --steps "$STAGE1_STEPS"
      ;;
    sfvr)
      train "$RUNS/sfvr" stage2 --init "$RUNS/stage1" --steps "$STAGE2_STEPS"
      ;;
    vanilla)
      train "$RUNS/vanilla" stage2 --init "$RUNS/stage1" --vanilla --steps "$STAGE2_STEPS"
      ;;
    sfvr3 | vanilla3)
      # --train-encoder: end to end in pixel space (the paper freezes the encoder here; with a
      # few thousand steps of token training the latent tokens still miss detail that the
      # pixel loss supplies; docs/token_stages.md). No GAN: PSNR is the target.
      train "$RUNS/$part" stage3 --init "$RUNS/${part%3}" --steps "$STAGE3_STEPS" --no-gan --train-encoder
      ;;
    sfvr3b | vanilla3b)
      train "$RUNS/$part" stage3 --init "$RUNS/${part%b}" --steps "$STAGE3B_STEPS" --no-gan --train-encoder
      ;;
    sfvr3c | vanilla3c)
      # From the bundled model when the 3b run is not here (a new machine has only assets/).
      init="$RUNS/${part%c}b"
      [ -e "$init/model/model.safetensors" ] || init="assets/models/${part%3c}"
      train "$RUNS/$part" stage3 --init "$init" --steps "$STAGE3C_STEPS" --lr "$STAGE3C_LR" \
        --no-gan --train-encoder
      ;;
    sfvr3d | vanilla3d)
      init="$RUNS/${part%d}c"
      [ -e "$init/model/model.safetensors" ] || init="assets/models/${part%3d}"
      train "$RUNS/$part" stage3 --init "$init" --steps "$STAGE3D_STEPS" --lr "$STAGE3D_LR" --no-gan
      ;;
    sfvr3e | vanilla3e)
      init="$RUNS/${part%e}c"
      [ -e "$init/model/model.safetensors" ] || init="assets/models/${part%3e}"
      train "$RUNS/$part" stage3 --init "$init" --steps "$STAGE3E_STEPS" --lr "$STAGE3E_LR" \
        --no-gan --train-encoder
      ;;
    bundle)
      mkdir -p assets/models/teacher assets/models/sfvr assets/models/vanilla
      teacher=teacher
      [ -e "$RUNS/teacher2/model/teacher.safetensors" ] && teacher=teacher2
      # A chain continued from the bundled models (sfvr3c / vanilla3c) has no teacher run: the
      # bundled teacher stays.
      if [ -e "$RUNS/$teacher/model/teacher.safetensors" ]; then
        cp "$RUNS/$teacher/model/config.json" "$RUNS/$teacher/model/teacher.safetensors" assets/models/teacher/
      fi
      for m in sfvr vanilla; do
        run="$RUNS/${m}3"
        [ -e "$RUNS/${m}3b/model/model.safetensors" ] && run="$RUNS/${m}3b"
        [ -e "$RUNS/${m}3c/model/model.safetensors" ] && run="$RUNS/${m}3c"
        [ -e "$RUNS/${m}3d/model/model.safetensors" ] && run="$RUNS/${m}3d"
        [ -e "$RUNS/${m}3e/model/model.safetensors" ] && run="$RUNS/${m}3e"
        cp "$run/model/config.json" "$run/model/model.safetensors" \
          "$run/model/teacher.safetensors" "assets/models/$m/"
      done
      ;;
    eval)
      $SFTOK eval --model assets/models/sfvr --model assets/models/vanilla --data "$EVAL" \
        --steps 1,2,4,8,16 --json docs/eval.json --markdown docs/eval.md --plot docs/eval.png
      ;;
    *)
      echo "unknown part $part: use teacher, teacher2, stage1, sfvr, vanilla, sfvr3, vanilla3, sfvr3b, vanilla3b, sfvr3c, vanilla3c, sfvr3d, vanilla3d, sfvr3e, vanilla3e, bundle or eval" >&2
      exit 2
      ;;
  esac
done
