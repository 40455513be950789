#!/bin/bash
# Builds a class-per-folder view (symbolic links) of a flat folder of photos whose file names
# start with their group, as ../shared/data/train's do: gcompris_<activity>_<hash>.webp (the
# activity is the class: categorization, erase, explore_monuments, ...) and mate_* / plasma_*
# (two wallpaper sets). `sftok train generator` takes a class from each image's sub-folder.
#
#   scripts/generator_classes.sh ../shared/data/train /tmp/generator-data
set -euo pipefail
src=$(cd "${1:?usage: $0 SOURCE_DIR OUT_DIR}" && pwd)
out=${2:?usage: $0 SOURCE_DIR OUT_DIR}
mkdir -p "$out"
for f in "$src"/*; do
  [ -f "$f" ] || continue
  name=$(basename "$f")
  case "$name" in
    gcompris_explore_*) class=$(echo "$name" | sed -E 's/^gcompris_explore_(.*)_[0-9a-f]{10}[_.].*/\1/') ;;
    gcompris_*) class=$(echo "$name" | sed -E 's/^gcompris_([a-z]+)_.*/\1/') ;;
    *_*) class=${name%%_*} ;;
    *) class=other ;;
  esac
  mkdir -p "$out/$class"
  ln -sf "$f" "$out/$class/$name"
done
for d in "$out"/*/; do echo "$(ls "$d" | wc -l) $(basename "$d")"; done
