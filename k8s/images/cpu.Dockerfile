# syntax=docker/dockerfile:1
# Relais for CPU nodes (x86-64 or arm64): ONNX Runtime CPU provider, default model set
# baked in (fp32 + int8). Build from the repository root (BuildKit):
#
#   docker buildx build -f k8s/images/cpu.Dockerfile -t REGISTRY/relais/relais-cpu:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -f k8s/images/cpu.Dockerfile ... --push .
#
# Stage `models` runs the export toolchain (torch) on the build machine's own platform;
# its output (ONNX files + models.yaml) is platform-independent and is all that reaches
# the runtime image, which has no torch.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS models
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==2.13.0" \
    && pip install --no-cache-dir ".[models]" \
    && relais models prepare --dir /models --precision int8 \
    && relais models verify --dir /models

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="relais-cpu" \
      org.opencontainers.image.description="Relais simultaneous speech translation (ONNX Runtime CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RELAIS_MODELS_DIR=/opt/relais/models
WORKDIR /opt/relais/src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY export/ export/
RUN pip install --no-cache-dir ".[riva]" \
    && groupadd --gid 10001 relais \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin relais
COPY --from=models /models /opt/relais/models
COPY k8s/images/entrypoint.sh k8s/images/trt_cache_key.py k8s/images/healthcheck.py /opt/relais/
USER 10001:10001
EXPOSE 50051 9090 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s CMD ["python3", "/opt/relais/healthcheck.py"]
ENTRYPOINT ["/opt/relais/entrypoint.sh"]
CMD ["serve"]
