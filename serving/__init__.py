"""serving: Ray Serve replicas answering gRPC scoring calls (protos/freshrec/v1/scoring.proto).

Not built yet: only the wire contract exists (protos/); serving lands with its own issue.
"""
