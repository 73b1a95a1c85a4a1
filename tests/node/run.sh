#!/usr/bin/env bash
# Cross-language proof: run every committed models/*/model.onnx in onnxruntime-node and compare with the
# Keras outputs in golden.npz beside it. Arguments go to check.mjs: [--self-test] [MODELS_DIR].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

command -v node >/dev/null || { echo "run.sh: node is not on PATH" >&2; exit 127; }
command -v npm >/dev/null || { echo "run.sh: npm is not on PATH" >&2; exit 127; }

# npm ci writes node_modules/.package-lock.json; reinstall when it is missing or older than the lockfile
# or package.json. ONNXRUNTIME_NODE_INSTALL=skip: the package ships its CPU binaries; its install script
# would otherwise try to download CUDA binaries from outside the npm registry.
stamp=node_modules/.package-lock.json
if [[ ! -f $stamp || package-lock.json -nt $stamp || package.json -nt $stamp \
      || ! -d node_modules/onnxruntime-node ]]; then
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund >&2
fi

exec node check.mjs "$@"
