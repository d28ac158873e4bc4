pub mod completion;
pub mod env;
pub mod function;
pub mod route;
pub mod up;
pub mod usage;
