//! Reconcile against a mocked API server.
