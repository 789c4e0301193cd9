#!/usr/bin/env bash
# Copy the real training sets into .traindata/ (ignored by git; the lead carries it to the GPU machine).
# Training only: ahn_amsterdam is validation and ign_montpellier and ign_lidarhd_extra/crop_2.laz are test
# sets of bench/real_cities.py, so they are never copied. About 13 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${GEOIMPLICIT_SHARED_DATA:-../shared/data}
DST=.traindata
mkdir -p "$DST/ign_vienne_rgb" "$DST/autzen" "$DST/ahn_delft" "$DST/ign_lidarhd_extra"
cp "$SRC"/ign_vienne_rgb/*.laz "$DST/ign_vienne_rgb/"
cp "$SRC/autzen/autzen_trim.laz" "$SRC/autzen/autzen-srs.wkt" "$DST/autzen/"
cp "$SRC"/ahn_delft/ahn3_cropped_1.laz "$SRC"/ahn_delft/ahn3_cropped_2.laz "$DST/ahn_delft/"
for f in bat.laz crop_1.laz 870000_6618000.subset.postValidation.laz; do
  cp "$SRC/ign_lidarhd_extra/$f" "$DST/ign_lidarhd_extra/"
done
chmod -R u+w "$DST"
du -sh "$DST"
