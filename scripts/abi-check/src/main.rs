//! Writes bindgen's Rust bindings of `<include>/mlx/c/mlx.h` to stdout, with the settings of
//! mlx-sys/build/bindings.rs, so that two header trees can be compared item by item.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, include] = args.as_slice() else {
        eprintln!("usage: abi-check <include dir holding mlx/c/mlx.h>");
        return ExitCode::from(2);
    };
    let target = match "1.73.0".parse() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bindgen rust target: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = bindgen::Builder::default()
        .rust_target(target)
        .header(format!("{include}/mlx/c/mlx.h"))
        .clang_arg(format!("-I{include}"))
        .allowlist_file(format!("{include}/.*"))
        .allowlist_recursively(true)
        .layout_tests(false)
        .generate();
    match result {
        Ok(b) => {
            print!("{b}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bindgen failed: {e}");
            ExitCode::FAILURE
        }
    }
}
