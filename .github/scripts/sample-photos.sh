#!/usr/bin/env bash
# Fetch the 5,000 sample photos (cat.1-2500, dog.1-2500) into $1/{cat,dog}, as ../shared holds them.
set -euo pipefail
dest=$1
src=$(mktemp -d)
git clone -q --filter=blob:none --no-checkout "$PHOTOS_REPO" "$src"
git -C "$src" checkout -q "$PHOTOS_COMMIT" -- train_set/cats train_set/dogs
mkdir -p "$dest/cat" "$dest/dog"
for i in $(seq 1 2500); do
  cp "$src/train_set/cats/cat.$i.jpg" "$dest/cat/"
  cp "$src/train_set/dogs/dog.$i.jpg" "$dest/dog/"
done
echo "$(find "$dest" -name '*.jpg' | wc -l) photos in $dest"
