//! `examples/contend.rs` as a binary, for tests/processes.rs (see Cargo.toml).

#[path = "../../examples/contend.rs"]
mod example;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    example::main()
}
