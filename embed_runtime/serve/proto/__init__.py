"""Protobuf messages generated from ``grpc_predict_v2.proto``; see ``README.md`` here for the command."""
