//! What every Plenum service shares: the common config groups, telemetry, the
//! metrics endpoint, the shutdown signal, and a gRPC `serve()` that always carries
//! health and reflection.
#![forbid(unsafe_code)]

pub mod bytes;
pub mod config;
pub mod connections;
pub mod deadline;
pub mod grpc;
pub mod grpc_metrics;
pub mod health;
mod idle;
pub mod listen;
pub mod metrics;
pub mod propagation;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
