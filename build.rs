// Embeds every shaders/*.wgsl into the binary, so adding a kernel family is adding a file.
// Helpers shared by several families live in shaders/include/ and are pasted in where a
// kernel file says `// #include "NAME"` (src/gpu/wgsl_include.rs, also used at run time for
// KILN_SHADERS folders); the embedded copies are the expanded ones, so every test and
// translation sees exactly what wgpu gets.
use std::{collections::BTreeMap, env, fs, path::Path};

include!("src/gpu/wgsl_include.rs");

fn wgsl_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wgsl"))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    let root = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).to_path_buf();
    let out_dir = Path::new(&env::var("OUT_DIR").unwrap()).join("shaders");
    fs::create_dir_all(&out_dir).unwrap();
    let include_dir = root.join("shaders/include");
    let includes: BTreeMap<String, String> = wgsl_files(&include_dir)
        .into_iter()
        .map(|n| {
            let text = fs::read_to_string(include_dir.join(&n)).unwrap();
            (n, text)
        })
        .collect();
    let mut out = String::from("pub static SHADER_FILES: &[(&str, &str)] = &[\n");
    for n in wgsl_files(&root.join("shaders")) {
        let text = fs::read_to_string(root.join("shaders").join(&n)).unwrap();
        let expanded = expand_includes(&text, &|name| includes.get(name).cloned()).unwrap_or_else(|e| panic!("shaders/{n}: {e}"));
        let path = out_dir.join(&n);
        fs::write(&path, expanded).unwrap();
        out += &format!("    ({:?}, include_str!({:?})),\n", n.trim_end_matches(".wgsl"), path.display().to_string());
    }
    out += "];\n";
    out += "/// shaders/include/: the helpers kernel files paste in, for sources read from a folder.\n";
    out += "pub static INCLUDE_FILES: &[(&str, &str)] = &[\n";
    for n in includes.keys() {
        out += &format!("    ({n:?}, include_str!({:?})),\n", include_dir.join(n).display().to_string());
    }
    out += "];\n";
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("shader_files.rs"), out).unwrap();
}
