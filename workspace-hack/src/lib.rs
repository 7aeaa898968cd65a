//! Compiles nothing: see Cargo.toml.
