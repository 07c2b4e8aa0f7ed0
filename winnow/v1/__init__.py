"""Generated protobuf/gRPC stubs for protos/winnow/v1 (do not edit; run scripts/gen_protos.py)."""
