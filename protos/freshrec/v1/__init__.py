"""Generated gRPC stubs live here (`make protos`); this file makes the folder an importable package."""
