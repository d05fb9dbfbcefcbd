// Embeds every shaders/*.wgsl into the binary, so adding a kernel family is adding a file.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    let mut names: Vec<String> = fs::read_dir("shaders")
        .expect("shaders/ folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    names.sort();
    let root = env::var("CARGO_MANIFEST_DIR").unwrap();
    let mut out = String::from("pub static SHADER_FILES: &[(&str, &str)] = &[\n");
    for n in &names {
        let stem = n.trim_end_matches(".wgsl");
        out += &format!("    ({stem:?}, include_str!({:?})),\n", format!("{root}/shaders/{n}"));
    }
    out += "];\n";
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("shader_files.rs"), out).unwrap();
}
