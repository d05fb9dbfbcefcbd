//! WGSL sources: embedded at build time, or read from `KILN_SHADERS=DIR` so a kernel can be
//! edited and re-run without rebuilding. Every module passes naga's validator before wgpu
//! sees it, so a broken shader is reported with file and line, not as a driver error.

use crate::{Error, Result};
use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/shader_files.rs"));
include!("wgsl_include.rs");

pub struct ShaderSet {
    /// Where to read sources from instead of the embedded copies.
    pub dir: Option<PathBuf>,
}

impl ShaderSet {
    /// Sources from `dir` where it has a file for a shader, else the embedded ones; without
    /// `dir`, from the folder `KILN_SHADERS` names, if any.
    pub fn new(dir: Option<PathBuf>) -> Result<ShaderSet> {
        let dir = dir.or_else(|| std::env::var_os("KILN_SHADERS").filter(|d| !d.is_empty()).map(PathBuf::from));
        if let Some(d) = &dir {
            if !d.is_dir() {
                return Err(Error::Invalid(format!("shader folder {}: not a folder", d.display())));
            }
        }
        Ok(ShaderSet { dir })
    }

    /// The source of `shader` and the path errors should name.
    pub fn source(&self, shader: &str) -> Result<(String, String)> {
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{shader}.wgsl"));
            if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
                // The folder's own include/ first, else the embedded helpers.
                let lookup = |name: &str| {
                    std::fs::read_to_string(dir.join("include").join(name))
                        .ok()
                        .or_else(|| INCLUDE_FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| t.to_string()))
                };
                let text = expand_includes(&text, &lookup).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                return Ok((text, path.display().to_string()));
            }
        }
        SHADER_FILES
            .iter()
            .find(|(name, _)| *name == shader)
            .map(|(_, text)| (text.to_string(), format!("shaders/{shader}.wgsl")))
            .ok_or_else(|| Error::Invalid(format!("no shader named {shader:?}")))
    }

    /// The source of `shader` once naga has validated it, and found it needs no capability
    /// beyond those `features` give (see [`check_capabilities`]).
    pub fn validated_source(&self, shader: &str, features: wgpu::Features, downlevel: wgpu::DownlevelFlags) -> Result<String> {
        let (text, path) = self.source(shader)?;
        let module = validate_wgsl(&text, &path)?;
        check_capabilities(&module, &text, &path, features, downlevel)?;
        Ok(text)
    }
}

/// Refuses a valid module that needs a shader capability `features` do not give (subgroup
/// operations on DX12 under FXC, say), with naga's message naming it, file and line. The
/// mapping is wgpu's own (`wgpu_naga_bridge`), so this is the check wgpu would make when the
/// module is created; the backend translation tests decide with it which modules a target
/// cannot create.
pub fn check_capabilities(module: &naga::Module, source: &str, path: &str, features: wgpu::Features, downlevel: wgpu::DownlevelFlags) -> Result<()> {
    wgpu_naga_bridge::create_validator(features, downlevel, naga::valid::ValidationFlags::all())
        .validate(module)
        .map(|_| ())
        .map_err(|e| Error::Limit(format!("shader {path} needs a feature the device lacks:\n{}", e.emit_to_string_with_path(source, path))))
}

/// Parses and validates WGSL with naga; the error carries naga's message with file and line.
pub fn validate_wgsl(source: &str, path: &str) -> Result<naga::Module> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| Error::Invalid(format!("shader {path} does not parse:\n{}", e.emit_to_string_with_path(source, path))))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| Error::Invalid(format!("shader {path} is invalid:\n{}", e.emit_to_string_with_path(source, path))))?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::expand_includes;

    #[test]
    fn includes_are_pasted_in_and_bad_ones_refused_by_name() {
        let lookup = |name: &str| match name {
            "a.wgsl" => Some("fn a() {}\n".to_string()),
            "nested.wgsl" => Some("// #include \"a.wgsl\"\n".to_string()),
            _ => None,
        };
        assert_eq!(expand_includes("fn main() {}\n// #include \"a.wgsl\"\n", &lookup).unwrap(), "fn main() {}\nfn a() {}\n");
        let e = expand_includes("// #include \"missing.wgsl\"\n", &lookup).unwrap_err();
        assert!(e.contains("missing.wgsl"), "{e}");
        let e = expand_includes("// #include \"nested.wgsl\"\n", &lookup).unwrap_err();
        assert!(e.contains("may not include another"), "{e}");
    }
}
