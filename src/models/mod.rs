//! What is computed, as data: every backend executes these definitions and none of them
//! is written again inside a backend.

pub mod abc;
pub mod mnist;
pub mod program;
pub mod rng;
pub mod safetensors_io;

pub use program::{InputDecl, Node, Op, Program, Reduction, Role, ValueId, ValueType};
