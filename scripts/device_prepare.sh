#!/usr/bin/env bash
# Gets a checkout ready for scripts/device_check.sh on a GPU machine that cannot download:
# the wheels of the dependencies its image lacks (ase, vesin, torch-pme; torch and e3nn are
# there) in .whl/, and the acac data in .device/data/acac. Both are ignored by git (through
# .git/info/exclude) and travel with the run (carry: .whl .device).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p .git/info .device/data
for path in /.whl/ /.device/; do grep -qsx "$path" .git/info/exclude || echo "$path" >> .git/info/exclude; done
versions=$("$PYTHON" -c "import ase, vesin, torchpme; print(f'ase=={ase.__version__} vesin=={vesin.__version__} torch-pme=={torchpme.__version__}')")
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${DEVICE_PYTHON:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl $versions
cp -r ../shared/data/acac .device/data/
ls .whl .device/data
