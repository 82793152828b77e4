#!/bin/bash
# The accuracy side of the SPP/R-CNN comparison (issue 7): VOC07 test mAP of R-CNN features
# against SPP at 1 scale (688) and 5 scales, with one trunk (zf5, --weights), the same proposals
# (ss-fast, the top 100 per image), pool5 features and the same SVM and box-regression training.
#
#   bash benchmarks/rcnn_vs_spp_accuracy.sh ../shared/data/raccoon-voc /tmp/acc [WEIGHTS]
#
# Writes OUT/times.txt (seconds per command) and OUT/results.txt (mAP per variant).
set -euo pipefail
D=$(realpath "$1"); OUT=$2; WEIGHTS=${3:-random}
mkdir -p "$OUT" && cd "$OUT"
P=(--preset quick-cpu)
t() { local s; s=$(date +%s); "$@"; echo "TIME $(( $(date +%s) - s )) s: $*" >> times.txt; }
for s in trainval test; do t sppdet propose --data "$D" --split $s --max-boxes 100 --work w1 "${P[@]}"; done
mkdir -p w5 && cp -r w1/proposals w5/ && cp w1/settings.json w5/
for s in trainval test; do
  t sppdet cache-features --data "$D" --split $s --scales 688 --max-size 2000 --weights "$WEIGHTS" --work w1 "${P[@]}"
  t sppdet cache-features --data "$D" --split $s --features rcnn --weights "$WEIGHTS" --work w1 "${P[@]}"
  t sppdet cache-features --data "$D" --split $s --scales 480,576,688,874,1200 --max-size 2000 --weights "$WEIGHTS" --work w5 "${P[@]}"
done
run_models() {  # work folder, features
  t sppdet train-svm --data "$D" --layer pool5 --no-finetuned --features "$2" --work "$1" "${P[@]}"
  t sppdet train-bbox --data "$D" --features "$2" --work "$1" "${P[@]}"
  t sppdet detect --data "$D" --features "$2" --work "$1" "${P[@]}" --out "$1/det-$2-bbox"
  t sppdet detect --data "$D" --features "$2" --work "$1" "${P[@]}" --no-bbox --out "$1/det-$2-nobbox" --force
}
run_models w1 spp; run_models w1 rcnn; run_models w5 spp
for d in w1/det-spp-bbox w1/det-spp-nobbox w1/det-rcnn-bbox w1/det-rcnn-nobbox w5/det-spp-bbox w5/det-spp-nobbox; do
  echo "$d $(sppdet evaluate --data "$D" --split test --detections $d --voc2007 2>&1 | grep mAP)" >> results.txt
done
