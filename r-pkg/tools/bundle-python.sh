#!/bin/sh
# Copy the repository's Python package into inst/python/ so the R package carries the same
# version of it (install_pyfastopt() installs that copy). The source stays ../pyfastopt: the copy
# is made at install/build time and is not in git. Run from the R package's folder; does nothing
# outside a checkout (e.g. in a source tarball, which already holds inst/python).
set -e
src=..
[ -f "$src/pyproject.toml" ] && [ -f "$src/pyfastopt/__init__.py" ] || exit 0
dest=inst/python
rm -rf "$dest"
mkdir -p "$dest"
cp "$src/pyproject.toml" "$src/README.md" "$dest/"
# the whole package (subpackages such as pyfastopt/optimizers, the C source and header), without
# byte-code caches
cp -R "$src/pyfastopt" "$dest/"
find "$dest/pyfastopt" -name __pycache__ -type d -prune -exec rm -rf {} +
