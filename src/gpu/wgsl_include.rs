// Shared by build.rs (which `include!`s this file) and src/gpu/shaders.rs: WGSL has no imports,
// so helpers used by several shader families live once in shaders/include/ and are pasted in.

/// `text` with each line `// #include "NAME"` replaced by `lookup(NAME)`: the text of
/// shaders/include/NAME. The directive is a comment, so editors still read the file as WGSL;
/// includes go at the end of a file (WGSL declarations may come after their use), so naga's
/// line numbers for the file's own code stay those of the file. An included file may not
/// include another.
pub fn expand_includes(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let Some(name) = line.trim().strip_prefix("// #include ") else {
            out.push_str(line);
            continue;
        };
        let name = name.trim().trim_matches('"');
        let included = lookup(name).ok_or_else(|| format!("#include \"{name}\": no file shaders/include/{name}"))?;
        if included.lines().any(|l| l.trim().starts_with("// #include ")) {
            return Err(format!("#include \"{name}\": an included file may not include another"));
        }
        out.push_str(&included);
        if !included.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
