//! `kiln check`: conformance cases made by PyTorch (scripts/torch_cases.py), run through
//! kiln's kernels and compared tensor by tensor. The file format is in docs/CHECK.md.
//!
//! ```no_run
//! # fn main() -> kiln::Result<()> {
//! use kiln::check::{check_file, CaseFile, Registry};
//! let file = CaseFile::load("fixtures/torch_cases.safetensors")?;
//! let gpu = kiln::Gpu::new(&Default::default())?;
//! let report = check_file(&gpu, &Registry::builtin(), &file, |r| println!("{r}"));
//! println!("{}", report.summary());
//! # Ok(()) }
//! ```

mod case;
mod ops;
mod report;
mod runners;
mod via_graph;

pub use case::{Case, CaseFile, HostTensor, ABS_TOL, DEFAULT_TOL, METADATA_KEY};
pub use ops::{run_op, Attr, OpResult, OpSpec, Registry, Runner, SPEC_OPS};
pub use report::{check_case, check_file, compare, judge, name_width, CaseResult, Comparison, Report, Verdict};
