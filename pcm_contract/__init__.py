"""The contract between the selector service and its trainer clients.

Both sides import this package; it imports neither. It holds what the two must agree on: the
request/response models, the error types with their HTTP and gRPC codes, the proto codec and the
generated gRPC stubs, and the one run-config schema the HTTP body, the core config and the CLI
options are derived from. See docs/design.md, "The public contract".
"""
