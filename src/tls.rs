//! TLS: server config, backend client config, dev certificates.
