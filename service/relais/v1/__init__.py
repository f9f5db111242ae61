"""Generated gRPC/protobuf code for the Relais v1 API (tools/gen_protos.py; do not edit)."""
