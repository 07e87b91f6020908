"""serving: Ray Serve replicas answering gRPC scoring calls (see protos/)."""
