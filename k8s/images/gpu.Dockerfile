# syntax=docker/dockerfile:1
# Relais for datacenter NVIDIA GPUs (x86-64): ONNX Runtime with the TensorRT and CUDA
# execution providers, default model set baked in (fp32 + fp16 + int8). Build from the
# repository root (BuildKit):
#
#   docker buildx build -f k8s/images/gpu.Dockerfile -t REGISTRY/relais/relais-gpu:0.1.0 .
#
# CUDA 12 + cuDNN 9 come from the base image, TensorRT 10 from the tensorrt-cu12 wheels
# (its libraries are put on LD_LIBRARY_PATH for ONNX Runtime's TensorRT EP). Keep the
# three versions in step with onnxruntime-gpu's release notes. TensorRT engines are not
# baked in: they are built on the node and cached (docs/operations.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

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

FROM ${CUDA_IMAGE} AS runtime
ARG ORT_GPU_VERSION=1.22.0
ARG TENSORRT_VERSION=10.9.0.34
LABEL org.opencontainers.image.title="relais-gpu" \
      org.opencontainers.image.description="Relais simultaneous speech translation (ONNX Runtime TensorRT/CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RELAIS_MODELS_DIR=/opt/relais/models \
    LD_LIBRARY_PATH=/usr/local/lib/python3.10/dist-packages/tensorrt_libs
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/relais/src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
# the CPU onnxruntime (a dependency of the package) and onnxruntime-gpu share a module:
# keep only the GPU build
RUN pip3 install --no-cache-dir ".[riva]" \
    && pip3 uninstall -y onnxruntime \
    && pip3 install --no-cache-dir "onnxruntime-gpu==${ORT_GPU_VERSION}" "tensorrt-cu12==${TENSORRT_VERSION}" \
    && groupadd --gid 10001 relais \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin relais
COPY --from=models /models /opt/relais/models
COPY k8s/images/entrypoint.sh k8s/images/trt_cache_key.py k8s/images/healthcheck.py /opt/relais/
USER 10001:10001
EXPOSE 50051 9090 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=900s CMD ["python3", "/opt/relais/healthcheck.py"]
ENTRYPOINT ["/opt/relais/entrypoint.sh"]
CMD ["serve"]
