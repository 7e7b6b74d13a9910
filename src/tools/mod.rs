//! Tools on the same Engine: the labelled synthetic traffic generator and
//! the self-contained demo.

pub mod backtest;
pub mod check;
pub mod demo;
pub mod gen;
pub mod memory;
pub mod report_html;
pub mod tune;
