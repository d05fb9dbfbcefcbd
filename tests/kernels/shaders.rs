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

fn shader_dir(name: &str, edit: impl Fn(&str) -> String) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-shaders-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, source) = SHADER_FILES.iter().find(|(n, _)| *n == "elementwise").unwrap();
    std::fs::write(dir.join("elementwise.wgsl"), edit(source)).unwrap();
    dir
}

#[test]
fn an_edited_shader_folder_replaces_the_built_in_kernel() {
    use kiln::gpu::{Gpu, GpuOptions};
    let dir = shader_dir("edited", |s| s.replace("y[i] = p.alpha * a[i];", "y[i] = p.alpha * a[i] + 1.0;"));
    let gpu = Gpu::new(&GpuOptions { shaders: Some(dir.clone()), ..Default::default() }).unwrap();
    let (a, y) = (gpu.upload("a", &[1.0f32, 2.0]).unwrap(), gpu.zeros("y", 2).unwrap());
    gpu.run(&[kiln::kernels::elementwise::scale(&gpu, 3.0, &a, &y, 2).unwrap()]).unwrap();
    assert_eq!(gpu.read(&y).unwrap(), vec![4.0, 7.0]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_broken_shader_in_the_folder_is_reported_with_file_and_line_before_any_dispatch() {
    use kiln::gpu::{Gpu, GpuOptions};
    let dir = shader_dir("broken", |s| s.replace("y[i] = p.alpha * a[i];", "y[i] = p.alpha * a[i] + 1u;"));
    let gpu = Gpu::new(&GpuOptions { shaders: Some(dir.clone()), ..Default::default() }).unwrap();
    let (a, y) = (gpu.upload("a", &[1.0f32]).unwrap(), gpu.zeros("y", 1).unwrap());
    let err = kiln::kernels::elementwise::scale(&gpu, 3.0, &a, &y, 1).err().expect("must fail").to_string();
    assert!(err.contains(&dir.join("elementwise.wgsl").display().to_string()) && err.contains("1u"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
