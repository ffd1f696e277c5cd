#!/usr/bin/env bash
# `make demo`: get Fashion-MNIST, train a small CNN for a few minutes on the CPU,
# evaluate it on the held-out test set, and predict a few test images.
set -euo pipefail
cd "$(dirname "$0")/.."
IMGCLS=.venv/bin/imgcls
DATA=data/fashion-mnist
RUN=runs/demo

have_fashion_mnist() { [ -f "$DATA/.complete" ]; }

if ! have_fashion_mnist; then
  # Debian's package holds Fashion-MNIST; install it when this user may.
  if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "demo: installing Debian's dataset-fashion-mnist package"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "demo: apt-get could not install dataset-fashion-mnist"
  fi
  rm -rf "$DATA"
  if $IMGCLS data get fashion-mnist --out "$DATA" --download; then
    touch "$DATA/.complete"
  fi
fi

if have_fashion_mnist; then
  ARGS=(--model keras-cnn --img-size 28 --epochs 10)
else
  echo "demo: Fashion-MNIST is not available here; using scikit-learn's bundled digits instead"
  DATA=data/digits
  rm -rf "$DATA"
  $IMGCLS data get digits --out "$DATA"
  ARGS=(--model keras-cnn --img-size 16 --epochs 20 --batch-size 32)
fi

rm -rf "$RUN"
start=$(date +%s)
$IMGCLS train "$DATA" "${ARGS[@]}" --out "$RUN"
echo
echo "== evaluate on the held-out test set"
$IMGCLS evaluate "$RUN/best.safetensors" "$DATA" --out "$RUN/test"
echo
echo "== predict one test image per class"
mapfile -t samples < <(find "$DATA/test" -name '*.png' | sort | awk -F/ '!seen[$(NF-1)]++')
$IMGCLS predict "$RUN/best.safetensors" "${samples[@]}"
echo
accuracy=$(.venv/bin/python -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['accuracy']:.4f}\")" "$RUN/test/metrics.json")
echo "demo: test accuracy $accuracy in $(( $(date +%s) - start )) s; report: $RUN/report.html (test set: $RUN/test/report.html)"
