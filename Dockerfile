# syntax=docker/dockerfile:1
# GPU serving image for vqtok: ONNX Runtime (CUDA execution provider) + LitServe, the shipped weights, no torch.
#
#   docker build -t vqtok .
#   docker run --rm --gpus all -p 8000:8000 vqtok            # serves every model in weights/ on every visible GPU
#   docker run --rm --gpus all -p 8000:8000 -e VQTOK_API_KEY=secret vqtok
#
# The base must match the CUDA/cuDNN build of the onnxruntime-gpu wheel pip installs (CUDA 13, cuDNN 9);
# `vqtok serve --device cuda` refuses to start if the CUDA execution provider does not really activate.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/vqtok
ENV PATH=/opt/vqtok/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# .dockerignore lets through exactly pyproject.toml, README.md and the packages pyproject lists (weights included)
COPY . .
# The serving install only: the base dependencies + the `serve` extra. Fail the build if torch slipped in.
RUN pip install ".[serve]" \
 && python -c "import importlib.util as u, sys; sys.exit('torch is installed' if u.find_spec('torch') else 0)" \
 && python -c "import vqtok.server.app, vqtok.server.client, vqtok.export.runtime"

FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 vqtok
COPY --from=build /opt/vqtok /opt/vqtok
ENV PATH=/opt/vqtok/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VQTOK_HOST=0.0.0.0 \
    VQTOK_PORT=8000
USER vqtok
WORKDIR /home/vqtok
EXPOSE 8000
# /health is the one route without the API key; 200 once every worker has loaded every model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('VQTOK_PORT', '8000'), timeout=4)"]
# SIGTERM (docker stop): in-flight requests finish, then every worker stops. Give it --stop-timeout ≥ 35 s.
STOPSIGNAL SIGTERM
CMD ["vqtok", "serve", "--device", "cuda"]
