"""Docker HEALTHCHECK (plain `docker run`): grpc.health.v1 Check on the local port.
Kubernetes ignores HEALTHCHECK and uses its native gRPC probes (k8s/base/deployment.yaml).
With TLS on, set RELAIS_SERVER_HEALTH_PORT (the plaintext health-only port): this check uses
it when set (docs/security.md)."""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

health_port = os.environ.get("RELAIS_SERVER_HEALTH_PORT", "-1").strip()
port = health_port if health_port not in ("", "-1") else os.environ.get("RELAIS_SERVER_PORT", "50051")
try:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status
except grpc.RpcError:
    sys.exit(1)
sys.exit(0 if status == health_pb2.HealthCheckResponse.SERVING else 1)
