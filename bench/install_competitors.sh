#!/usr/bin/env bash
# Installs the proxies bench/onecore.py compares against into bench/.scratch/ (git-ignored), never
# into the project's own environment:
#   * claude-code-router (npm, @musistudio/claude-code-router) into bench/.scratch/ccr
#   * the LiteLLM proxy (pip, litellm[proxy]) into its own venv bench/.scratch/litellm-venv
# Usage: bash bench/install_competitors.sh   (re-running it is harmless)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)/.scratch"
mkdir -p "$here/ccr"
if [ ! -x "$here/ccr/node_modules/.bin/ccr" ]; then
  npm install --prefix "$here/ccr" --no-audit --no-fund @musistudio/claude-code-router
fi
if [ ! -x "$here/litellm-venv/bin/litellm" ]; then
  python3 -m venv "$here/litellm-venv"
  "$here/litellm-venv/bin/pip" install -q 'litellm[proxy]'
fi
echo "installed: $(cat "$here/ccr/node_modules/@musistudio/claude-code-router/package.json" | grep '"version"') ;" \
  "litellm $("$here/litellm-venv/bin/pip" show litellm | grep ^Version)"
