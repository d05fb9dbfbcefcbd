use kiln::gpu::{validate_wgsl, SHADER_FILES};

#[test]
fn every_shader_parses_and_validates_with_naga() {
    assert!(!SHADER_FILES.is_empty());
    let failures: Vec<String> = SHADER_FILES
        .iter()
        .filter_map(|(name, source)| validate_wgsl(source, &format!("shaders/{name}.wgsl")).err())
        .map(|e| e.to_string())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_broken_shader_is_reported_with_file_and_line() {
    let err = validate_wgsl("fn f() -> f32 {\n  return 1u;\n}\n", "shaders/broken.wgsl").unwrap_err().to_string();
    // naga points at the file and quotes the offending line.
    assert!(err.contains("shaders/broken.wgsl:") && err.contains("return 1u"), "{err}");
}
