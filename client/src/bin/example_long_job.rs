//! `examples/long_job.rs` as a binary, for tests/processes.rs (see Cargo.toml).

#[path = "../../examples/long_job.rs"]
mod example;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::main()
}
