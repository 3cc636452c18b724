//! Function export/import through our C API (its own test binary: MLX 0.32.4 binds an imported graph
//! to the stream indices recorded in the file, so the import is evaluated on the process's main MLX
//! thread, which a lone test runs on).

use mlx_sys as sys;

mod common;
use common::*;

#[test]
fn export_import_and_kwargs() {
    unsafe {
        // A kwargs closure, applied directly and exported/imported.
        let f = sys::mlx_closure_kwargs_new_func(Some(kwargs_cb));
        let x = f32s(&[1.0, 2.0], &[2]);
        let bias = f32s(&[0.5, 0.25], &[2]);
        let args = Vec_::of(&[&x]);
        let kwargs = sys::mlx_map_string_to_array_new();
        check(
            sys::mlx_map_string_to_array_insert(kwargs, c"bias".as_ptr(), bias.0),
            "insert",
        );
        let mut out = Vec_::new();
        check(
            sys::mlx_closure_kwargs_apply(&mut out.0, f, args.0, kwargs),
            "kwargs apply",
        );
        assert_close(&out.get(0).values(), &[1.5, 2.25], 0.0);

        let path = temp_path("fn.mlxfn");
        let file = cstr(path.to_str().expect("utf-8 temp path"));
        check(
            sys::mlx_export_function_kwargs(file.as_ptr(), f, args.0, kwargs, false),
            "export kwargs",
        );
        let imported = sys::mlx_imported_function_new(file.as_ptr());
        assert!(!imported.ctx.is_null(), "{}", last_error());
        check(
            sys::mlx_imported_function_apply_kwargs(&mut out.0, imported, args.0, kwargs),
            "imported apply",
        );
        assert_close(&out.get(0).values(), &[1.5, 2.25], 0.0);
        sys::mlx_imported_function_free(imported);

        // A positional closure through the exporter object.
        let g = sys::mlx_closure_new_unary(Some(square_unary));
        let path2 = temp_path("sq.mlxfn");
        let file2 = cstr(path2.to_str().expect("utf-8 temp path"));
        let exporter = sys::mlx_function_exporter_new(file2.as_ptr(), g, false);
        assert!(!exporter.ctx.is_null(), "{}", last_error());
        check(
            sys::mlx_function_exporter_apply(exporter, args.0),
            "exporter",
        );
        sys::mlx_function_exporter_free(exporter);
        let imported = sys::mlx_imported_function_new(file2.as_ptr());
        check(
            sys::mlx_imported_function_apply(&mut out.0, imported, args.0),
            "import",
        );
        assert_close(&out.get(0).values(), &[1.0, 4.0], 0.0);
        sys::mlx_imported_function_free(imported);

        // Importing a missing file is an error.
        let missing = cstr("/nonexistent/zmlx.mlxfn");
        assert!(sys::mlx_imported_function_new(missing.as_ptr())
            .ctx
            .is_null());

        sys::mlx_map_string_to_array_free(kwargs);
        sys::mlx_closure_kwargs_free(f);
        sys::mlx_closure_free(g);
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(path2);
    }
}
