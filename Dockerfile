# One image for every FedCoin role (miner, server, client, requester) and for `fedcoin testnet init`.
#
#   docker build -t fedcoin .                                          # FROM the official python image
#   docker build --build-arg BASE=fedcoin-base:bookworm -t fedcoin .   # FROM scripts/build-base-image.sh's image
#
# The role and port come from FEDCOIN_ROLE / FEDCOIN_PORT (see docker-compose.yml); every
# other setting is a FEDCOIN_* variable (fedcoin.node.settings; the README's "Configuration").
# Everything but the source comes first, so a source edit rebuilds only the last three
# steps (each step after the 6 GB dependency layer costs a commit; slow on fuse-overlayfs).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    FEDCOIN_DATA_DIR=/data
EXPOSE 8000 8001 8002 8101 8102 8103 8104
CMD ["sh", "-c", "exec fedcoin serve \"${FEDCOIN_ROLE:?set FEDCOIN_ROLE to miner, server, client or requester}\" --host 0.0.0.0 --port \"${FEDCOIN_PORT:-8000}\""]

# The offline default dataset (/usr/share/datasets/fashion-mnist) from Debian's archive, and
# the unprivileged user the services run as (owner of the /data and /net mount points, so
# fresh named volumes mounted there belong to it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/* \
 && test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/fedcoin --shell /usr/sbin/nologin fedcoin \
 && mkdir -p /data /net \
 && chown fedcoin:fedcoin /data /net

# Dependencies only, read from pyproject.toml: editing the source does not reinstall torch.
# TORCH_INDEX_URL (optional, e.g. a CPU-only wheel index) installs torch/torchvision from
# there first; by default they come from PyPI like everything else.
ARG TORCH_INDEX_URL=
COPY pyproject.toml /tmp/fedcoin/pyproject.toml
RUN python3 -m venv "$VIRTUAL_ENV" \
 && python -c "import tomllib; p = tomllib.load(open('/tmp/fedcoin/pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/fedcoin/requirements.txt \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch torchvision; fi \
 && pip install -r /tmp/fedcoin/requirements.txt \
 && rm -rf /tmp/fedcoin

# The package itself: pyproject.toml, README.md, shared/, services/ (.dockerignore keeps
# everything else out); no network, its build requirements are installed above.
WORKDIR /app
COPY . .
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf build *.egg-info shared/*.egg-info \
 && fedcoin version
USER fedcoin
