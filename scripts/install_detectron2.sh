#!/usr/bin/env bash
# Install detectron2 into the given python's environment.
# An importable detectron2 is kept as it is; otherwise the registry build
# sal-detectron2==0.7.2 (upstream detectron2 code, pure-python wheel tagged cp310) is
# downloaded from the package index, checked against a pinned sha256, renamed to a
# py3 tag and installed without dependencies (requirements.txt lists those).
set -euo pipefail
PY=${1:?usage: install_detectron2.sh PYTHON}
WHEEL=sal_detectron2-0.7.2-cp310-none-any.whl
SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

if "$PY" -c "import detectron2, detectron2.modeling" 2>/dev/null; then
  echo "detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') already importable"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
  --implementation cp -d "$tmp" sal-detectron2==0.7.2
echo "$SHA256  $tmp/$WHEEL" | sha256sum -c --quiet - || {
  echo "error: checksum mismatch for $WHEEL (expected $SHA256)" >&2; exit 1; }
mv "$tmp/$WHEEL" "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
"$PY" -m pip install -q --no-deps "$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
"$PY" -c "import detectron2.modeling; print('detectron2', detectron2.__version__, 'installed')"
