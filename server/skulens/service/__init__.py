"""Service: the gRPC server. Adapters (servicers, auth, call log, metrics, error→status table) over use cases.

Settings are built once at start-up (`settings`), the runtime (`state`) holds an `Encoder` and a
`CatalogBackend` by their Protocols, admission refuses work before it is decoded. The only room that imports
grpc's server side; imports inference, imaging, catalog and model, and nothing imports it but `skulens.cli`.
"""
