//! Scenario tests and their harnesses: labs of network namespaces and virtual machines.
pub mod cluster;
pub mod kind;
pub mod layout;
pub mod node;
pub mod vm;
