fn main() {
    println!("zmlx (MLX {})", zmlx::sys::MLX_VERSION);
}
