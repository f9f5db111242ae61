# syntax=docker/dockerfile:1
# Relais for NVIDIA Jetson Orin (JetPack 6, L4T r36, arm64): ONNX Runtime with the
# TensorRT and CUDA execution providers on the integrated GPU. CUDA, cuDNN and TensorRT
# come from the L4T JetPack base image (mounted from the host by the nvidia runtime).
# Build on an x86 machine with QEMU/binfmt, or on a Jetson:
#
#   docker buildx build --platform linux/arm64 -f k8s/images/jetson.Dockerfile \
#       -t REGISTRY/relais/relais-jetson:0.1.0 .
#
# onnxruntime-gpu for JetPack is not on PyPI: ORT_WHEEL names a wheel built for JetPack 6
# (NVIDIA's Jetson wheel index, or your own build: docs/operations.md). The model set is
# prepared on the build machine's platform (stage `models`) and copied in.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0

FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS models
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0" \
    && pip install --no-cache-dir ".[models]" \
    && relais models prepare --dir /models --precision fp16 --precision int8 \
    && relais models verify --dir /models

FROM ${L4T_IMAGE} AS runtime
ARG ORT_WHEEL_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG ORT_GPU_VERSION=1.20.0
LABEL org.opencontainers.image.title="relais-jetson" \
      org.opencontainers.image.description="Relais simultaneous speech translation (Jetson, JetPack 6)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RELAIS_MODELS_DIR=/opt/relais/models
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip python3-libnvinfer \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/relais/src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
RUN pip3 install --no-cache-dir ".[riva]" \
    && pip3 uninstall -y onnxruntime \
    && pip3 install --no-cache-dir --extra-index-url "$ORT_WHEEL_INDEX" "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && groupadd --gid 10001 relais \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin relais
COPY --from=models /models /opt/relais/models
COPY k8s/images/entrypoint.sh k8s/images/trt_cache_key.py k8s/images/healthcheck.py /opt/relais/
USER 10001:10001
EXPOSE 50051 9090 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=1200s CMD ["python3", "/opt/relais/healthcheck.py"]
ENTRYPOINT ["/opt/relais/entrypoint.sh"]
CMD ["serve"]
