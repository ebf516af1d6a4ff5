#!/usr/bin/env bash
# Wheels for the lent GPU machine (issue #18). Its image has Python 3.12 with torch, Lightning,
# transformers, scikit-learn, h5py, numba ... but not anndata, scanpy, scvi-tools, mudata and
# their own dependencies, and it reaches no package registry. Run here, from the repository
# root, in the project's virtual environment; then call the device tool with
#   command: bash benchmarks/device/run.sh      carry: [".whl"]
# .whl/ is kept out of git through .git/info/exclude (about 31 MB; the limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 any; do
    platforms+=(--platform "$p")
done
# the versions this project is tested with (pip list in .venv); pandas pinned to 2.x
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    anndata==0.12.19 annotated-types==0.8.0 array-api-compat==1.16.0 donfig==0.8.1.post1 \
    google-crc32c==1.9.0 httpcore2==2.16.2 httpx2==2.16.2 legacy-api-wrap==1.5 \
    ml-collections==1.1.0 mudata==0.3.10 natsort==8.4.0 numcodecs==0.16.6 pandas==2.3.3 \
    pydantic==2.14.4 pydantic-core==2.50.5 pynndescent==0.7.0 pyro-api==0.1.2 pyro-ppl==1.9.2 \
    pytz==2026.6 scanpy==1.11.5 scverse-misc==0.0.3 scvi-tools==1.4.2 session-info2==0.4.1 \
    sparse==0.19.3 truststore==0.10.5 typing-inspection==0.4.5 tzdata==2026.6 \
    umap-learn==0.5.12 zarr==3.1.6
python -m pip wheel -q --no-deps docrep==0.3.2 -w .whl   # sdist only on PyPI
python -m pip wheel -q --no-deps . -w .whl               # this package, as it is now
du -sh .whl
