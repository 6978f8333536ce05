pub mod check;
pub mod history;
