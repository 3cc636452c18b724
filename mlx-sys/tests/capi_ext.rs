//! The parts of our mlx-c 0.7.0 C API that mlx-rs does not exercise, through the raw FFI: every closure
//! kind with payload/destructor lifetimes and failing callbacks, custom readers/writers, GGUF objects,
//! function export/import, graph printing, compile caches, distributed groups, the Metal/CUDA stubs of
//! a CPU build, a few generated ops (fft, linalg, random) and null result pointers.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use mlx_sys as sys;

mod common;
use common::*;

// --- closures -----------------------------------------------------------------------------------------

static DTOR_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Payload: a scale factor. Callback: out = [x * scale] for the first input; fails on an empty input.
unsafe extern "C" fn scale_cb(
    res: *mut sys::mlx_vector_array,
    input: sys::mlx_vector_array,
    payload: *mut c_void,
) -> c_int {
    let scale = *(payload as *const f32);
    if sys::mlx_vector_array_size(input) == 0 {
        return 7;
    }
    let mut x = sys::mlx_array_new();
    if sys::mlx_vector_array_get(&mut x, input, 0) != 0 {
        return 1;
    }
    let k = sys::mlx_array_new_float32(scale);
    let mut y = sys::mlx_array_new();
    let s = sys::mlx_default_cpu_stream_new();
    let rc = sys::mlx_multiply(&mut y, x, k, s);
    // Fill the handle we were given in place.
    let rc = rc | sys::mlx_vector_array_append_value(*res, y);
    sys::mlx_array_free(x);
    sys::mlx_array_free(k);
    sys::mlx_array_free(y);
    sys::mlx_stream_free(s);
    rc
}

unsafe extern "C" fn drop_scale(payload: *mut c_void) {
    drop(Box::from_raw(payload as *mut f32));
    DTOR_CALLS.fetch_add(1, Ordering::SeqCst);
}

/// No payload; replaces the result handle with a new one (the pattern mlx-rs uses): out = [x + x].
unsafe extern "C" fn double_cb(
    res: *mut sys::mlx_vector_array,
    input: sys::mlx_vector_array,
) -> c_int {
    let mut x = sys::mlx_array_new();
    sys::mlx_vector_array_get(&mut x, input, 0);
    let mut y = sys::mlx_array_new();
    let s = sys::mlx_default_cpu_stream_new();
    let rc = sys::mlx_add(&mut y, x, x, s);
    *res = sys::mlx_vector_array_new_value(y);
    sys::mlx_array_free(x);
    sys::mlx_array_free(y);
    sys::mlx_stream_free(s);
    rc
}

/// Calls an op that fails (reshape 2 elements to 3), then reports failure.
unsafe extern "C" fn failing_cb(
    _res: *mut sys::mlx_vector_array,
    input: sys::mlx_vector_array,
) -> c_int {
    let mut x = sys::mlx_array_new();
    sys::mlx_vector_array_get(&mut x, input, 0);
    let mut y = sys::mlx_array_new();
    let s = sys::mlx_default_cpu_stream_new();
    let shape = [3];
    let rc = sys::mlx_reshape(&mut y, x, shape.as_ptr(), 1, s);
    sys::mlx_array_free(x);
    sys::mlx_array_free(y);
    sys::mlx_stream_free(s);
    rc
}

#[test]
fn closure_payload_lives_until_the_last_copy() {
    DTOR_CALLS.store(0, Ordering::SeqCst);
    let payload = Box::into_raw(Box::new(3.0f32)) as *mut c_void;
    unsafe {
        let cls = sys::mlx_closure_new_func_payload(Some(scale_cb), payload, Some(drop_scale));
        assert!(!cls.ctx.is_null(), "{}", last_error());
        let mut copy = sys::mlx_closure_new();
        check(sys::mlx_closure_set(&mut copy, cls), "closure set");
        check(sys::mlx_closure_free(cls), "free original");
        assert_eq!(
            DTOR_CALLS.load(Ordering::SeqCst),
            0,
            "a copy still holds it"
        );

        let x = f32s(&[1.0, -2.0], &[2]);
        let input = Vec_::of(&[&x]);
        let mut out = Vec_::new();
        check(
            sys::mlx_closure_apply(&mut out.0, copy, input.0),
            "closure apply",
        );
        assert_close(&out.get(0).values(), &[3.0, -6.0], 0.0);

        // A non-zero status from the callback is an error of the call, with its status.
        let empty = Vec_::new();
        assert_ne!(sys::mlx_closure_apply(&mut out.0, copy, empty.0), 0);
        assert!(last_error().contains("status 7"), "{}", last_error());

        check(sys::mlx_closure_free(copy), "free copy");
        assert_eq!(DTOR_CALLS.load(Ordering::SeqCst), 1);

        // A failed creation still takes ownership of the payload.
        let payload = Box::into_raw(Box::new(1.0f32)) as *mut c_void;
        let bad = sys::mlx_closure_new_func_payload(None, payload, Some(drop_scale));
        assert!(bad.ctx.is_null());
        assert_eq!(DTOR_CALLS.load(Ordering::SeqCst), 2);
    }
}

#[test]
fn failing_callbacks_fail_transforms() {
    unsafe {
        let cls = sys::mlx_closure_new_func(Some(failing_cb));
        let x = f32s(&[1.0, 2.0], &[2]);
        let primals = Vec_::of(&[&x]);
        let (mut outs, mut vjps) = (Vec_::new(), Vec_::new());
        assert_ne!(
            sys::mlx_vjp(&mut outs.0, &mut vjps.0, cls, primals.0, primals.0),
            0
        );
        let msg = last_error();
        assert!(
            msg.contains("callback failed") && msg.contains("reshape"),
            "{msg}"
        );
        let argnums = [0];
        let mut vg = sys::mlx_closure_value_and_grad_new();
        check(
            sys::mlx_value_and_grad(&mut vg, cls, argnums.as_ptr(), 1),
            "value_and_grad",
        );
        assert_ne!(
            sys::mlx_closure_value_and_grad_apply(&mut outs.0, &mut vjps.0, vg, primals.0),
            0
        );
        sys::mlx_closure_value_and_grad_free(vg);
        sys::mlx_closure_free(cls);

        // The replacing style of callback works through a transform: d/dx sum(2x)... via jvp.
        let cls = sys::mlx_closure_new_func(Some(double_cb));
        let t = f32s(&[1.0, 1.0], &[2]);
        let tangents = Vec_::of(&[&t]);
        check(
            sys::mlx_jvp(&mut outs.0, &mut vjps.0, cls, primals.0, tangents.0),
            "jvp",
        );
        assert_close(&outs.get(0).values(), &[2.0, 4.0], 0.0);
        assert_close(&vjps.get(0).values(), &[2.0, 2.0], 0.0);
        sys::mlx_closure_free(cls);
    }
}

/// custom vjp rule: cotangent * 10 (instead of the true derivative)
unsafe extern "C" fn vjp_times_ten(
    res: *mut sys::mlx_vector_array,
    _primals: sys::mlx_vector_array,
    cotangents: sys::mlx_vector_array,
    _outputs: sys::mlx_vector_array,
) -> c_int {
    let mut c = sys::mlx_array_new();
    sys::mlx_vector_array_get(&mut c, cotangents, 0);
    let ten = sys::mlx_array_new_float32(10.0);
    let mut g = sys::mlx_array_new();
    let s = sys::mlx_default_cpu_stream_new();
    let rc = sys::mlx_multiply(&mut g, c, ten, s);
    let rc = rc | sys::mlx_vector_array_set_value(res, g);
    sys::mlx_array_free(c);
    sys::mlx_array_free(ten);
    sys::mlx_array_free(g);
    sys::mlx_stream_free(s);
    rc
}

/// custom vmap rule: apply the function to the batched input as is, output batched on the same axis.
unsafe extern "C" fn vmap_passthrough(
    res_0: *mut sys::mlx_vector_array,
    res_1: *mut sys::mlx_vector_int,
    inputs: sys::mlx_vector_array,
    in_axes: *const c_int,
    n: usize,
) -> c_int {
    let mut x = sys::mlx_array_new();
    sys::mlx_vector_array_get(&mut x, inputs, 0);
    let mut y = sys::mlx_array_new();
    let rc = square_unary(&mut y, x);
    let rc = rc | sys::mlx_vector_array_set_value(res_0, y);
    let axis = if n > 0 { *in_axes } else { 0 };
    let rc = rc | sys::mlx_vector_int_append_value(*res_1, axis);
    sys::mlx_array_free(x);
    sys::mlx_array_free(y);
    rc
}

#[test]
fn custom_functions_and_other_closure_kinds() {
    unsafe {
        let f = sys::mlx_closure_new_unary(Some(square_unary));
        let vjp_rule = sys::mlx_closure_custom_new_func(Some(vjp_times_ten));
        let vmap_rule = sys::mlx_closure_custom_vmap_new_func(Some(vmap_passthrough));
        let mut custom = sys::mlx_closure_new();
        check(
            sys::mlx_custom_function(
                &mut custom,
                f,
                vjp_rule,
                sys::mlx_closure_custom_jvp_new(),
                vmap_rule,
            ),
            "custom_function",
        );
        let x = f32s(&[1.0, 2.0, 3.0], &[3]);
        let ones = f32s(&[1.0, 1.0, 1.0], &[3]);
        let (primals, cot) = (Vec_::of(&[&x]), Vec_::of(&[&ones]));
        let (mut outs, mut grads) = (Vec_::new(), Vec_::new());
        check(
            sys::mlx_vjp(&mut outs.0, &mut grads.0, custom, primals.0, cot.0),
            "vjp of custom",
        );
        assert_close(&outs.get(0).values(), &[1.0, 4.0, 9.0], 0.0);
        assert_close(&grads.get(0).values(), &[10.0, 10.0, 10.0], 0.0);

        // The custom vjp through mlx_custom_vjp, applied directly.
        let mut cvjp = sys::mlx_closure_new();
        check(sys::mlx_custom_vjp(&mut cvjp, f, vjp_rule), "custom_vjp");
        check(
            sys::mlx_vjp(&mut outs.0, &mut grads.0, cvjp, primals.0, cot.0),
            "vjp",
        );
        assert_close(&grads.get(0).values(), &[10.0, 10.0, 10.0], 0.0);

        // Applying the kinds directly.
        let mut res = Vec_::new();
        check(
            sys::mlx_closure_custom_apply(&mut res.0, vjp_rule, primals.0, cot.0, primals.0),
            "custom apply",
        );
        assert_close(&res.get(0).values(), &[10.0, 10.0, 10.0], 0.0);
        let axes = [0];
        let mut out_axes = sys::mlx_vector_int_new();
        check(
            sys::mlx_closure_custom_vmap_apply(
                &mut res.0,
                &mut out_axes,
                vmap_rule,
                primals.0,
                axes.as_ptr(),
                1,
            ),
            "vmap apply",
        );
        assert_eq!(sys::mlx_vector_int_size(out_axes), 1);
        sys::mlx_vector_int_free(out_axes);

        // The checkpointed function gives the same values.
        let mut ck = sys::mlx_closure_new();
        check(sys::mlx_checkpoint(&mut ck, f), "checkpoint");
        check(
            sys::mlx_closure_apply(&mut res.0, ck, primals.0),
            "checkpoint apply",
        );
        assert_close(&res.get(0).values(), &[1.0, 4.0, 9.0], 0.0);

        // An empty closure is an error, not a crash.
        let empty = sys::mlx_closure_new();
        assert_ne!(sys::mlx_closure_apply(&mut res.0, empty, primals.0), 0);

        for c in [f, custom, cvjp, ck] {
            sys::mlx_closure_free(c);
        }
        sys::mlx_closure_custom_free(vjp_rule);
        sys::mlx_closure_custom_vmap_free(vmap_rule);
    }
}

// --- compile ------------------------------------------------------------------------------------------

#[test]
fn compile_and_its_cache() {
    unsafe {
        let f = sys::mlx_closure_new_func(Some(double_cb));
        let mut compiled = sys::mlx_closure_new();
        check(sys::mlx_compile(&mut compiled, f, false), "compile");
        let x = f32s(&[1.5, -1.0], &[2]);
        let input = Vec_::of(&[&x]);
        let mut out = Vec_::new();
        check(
            sys::mlx_closure_apply(&mut out.0, compiled, input.0),
            "compiled apply",
        );
        assert_close(&out.get(0).values(), &[3.0, -2.0], 0.0);

        let mut detail = sys::mlx_closure_new();
        let constants = [42u64];
        check(
            sys::mlx_detail_compile(&mut detail, f, 0x5eed, true, constants.as_ptr(), 1),
            "detail compile",
        );
        check(sys::mlx_closure_apply(&mut out.0, detail, input.0), "apply");
        assert_close(&out.get(0).values(), &[3.0, -2.0], 0.0);
        let mut cache = sys::mlx_compile_cache_new();
        check(sys::mlx_detail_compile_cache(&mut cache), "cache");
        check(sys::mlx_detail_compile_erase(cache, 0x5eed), "erase");
        check(sys::mlx_detail_compile_clear_cache(cache), "clear");
        check(sys::mlx_compile_cache_free(cache), "free cache");
        check(
            sys::mlx_set_compile_mode(sys::mlx_compile_mode__MLX_COMPILE_MODE_NO_FUSE),
            "mode",
        );
        check(sys::mlx_disable_compile(), "disable");
        check(sys::mlx_enable_compile(), "enable");
        check(
            sys::mlx_set_compile_mode(sys::mlx_compile_mode__MLX_COMPILE_MODE_ENABLED),
            "mode",
        );
        assert_ne!(sys::mlx_set_compile_mode(99), 0);
        for c in [f, compiled, detail] {
            sys::mlx_closure_free(c);
        }
    }
}

// --- io: custom readers/writers, gguf -----------------------------------------------------------------

/// An in-memory file for the io vtable.
#[derive(Default)]
struct MemFile {
    data: Vec<u8>,
    pos: usize,
    short: bool, // reads return one byte less than asked
}

static IO_FREES: AtomicUsize = AtomicUsize::new(0);

unsafe fn mem<'a>(d: *mut c_void) -> &'a mut MemFile {
    &mut *(d as *mut MemFile)
}
unsafe extern "C" fn io_true(_: *mut c_void) -> bool {
    true
}
unsafe extern "C" fn io_tell(d: *mut c_void) -> usize {
    mem(d).pos
}
unsafe extern "C" fn io_seek(d: *mut c_void, off: i64, whence: c_int) -> c_int {
    let m = mem(d);
    let base = match whence {
        0 => 0i64,
        1 => m.pos as i64,
        _ => m.data.len() as i64,
    };
    let to = base + off;
    if to < 0 {
        return -1;
    }
    m.pos = to as usize;
    0
}
unsafe extern "C" fn io_read(d: *mut c_void, out: *mut c_char, n: usize) -> usize {
    let m = mem(d);
    let n = n.min(m.data.len().saturating_sub(m.pos));
    let n = if m.short && n > 0 { n - 1 } else { n };
    std::ptr::copy_nonoverlapping(m.data.as_ptr().add(m.pos), out.cast(), n);
    m.pos += n;
    n
}
unsafe extern "C" fn io_read_at(d: *mut c_void, out: *mut c_char, n: usize, off: usize) -> usize {
    mem(d).pos = off;
    io_read(d, out, n)
}
unsafe extern "C" fn io_write(d: *mut c_void, src: *const c_char, n: usize) -> usize {
    let m = mem(d);
    let end = m.pos + n;
    if m.data.len() < end {
        m.data.resize(end, 0);
    }
    std::ptr::copy_nonoverlapping(src.cast(), m.data.as_mut_ptr().add(m.pos), n);
    m.pos = end;
    n
}
unsafe extern "C" fn io_label(_: *mut c_void) -> *const c_char {
    c"memfile".as_ptr()
}
unsafe extern "C" fn io_free(d: *mut c_void) {
    drop(Box::from_raw(d as *mut MemFile));
    IO_FREES.fetch_add(1, Ordering::SeqCst);
}

fn vtable() -> sys::mlx_io_vtable {
    sys::mlx_io_vtable {
        is_open: Some(io_true),
        good: Some(io_true),
        tell: Some(io_tell),
        seek: Some(io_seek),
        read: Some(io_read),
        read_at_offset: Some(io_read_at),
        write: Some(io_write),
        label: Some(io_label),
        free: Some(io_free),
    }
}

#[test]
fn custom_readers_and_writers() {
    IO_FREES.store(0, Ordering::SeqCst);
    unsafe {
        let s = stream();
        let a = f32s(&[1.0, 2.5, -3.0, 4.0], &[2, 2]);

        // .npy through a writer, then back through a reader.
        let file = Box::into_raw(Box::<MemFile>::default()) as *mut c_void;
        let w = sys::mlx_io_writer_new(file, vtable());
        check(sys::mlx_save_writer(w, a.0), "save_writer");
        let mut desc = std::ptr::null_mut();
        check(sys::mlx_io_writer_descriptor(&mut desc, w), "descriptor");
        assert_eq!(desc, file);
        let bytes = mem(file).data.clone();
        assert!(bytes.starts_with(b"\x93NUMPY"), "npy magic");
        check(sys::mlx_io_writer_free(w), "free writer");
        assert_eq!(IO_FREES.load(Ordering::SeqCst), 1);

        let file = Box::into_raw(Box::new(MemFile {
            data: bytes.clone(),
            ..Default::default()
        })) as *mut c_void;
        let r = sys::mlx_io_reader_new(file, vtable());
        let mut label = sys::mlx_string_new();
        check(sys::mlx_io_reader_tostring(&mut label, r), "tostring");
        assert_eq!(
            CStr::from_ptr(sys::mlx_string_data(label)).to_str(),
            Ok("memfile")
        );
        sys::mlx_string_free(label);
        let mut b = Arr::empty();
        check(sys::mlx_load_reader(&mut b.0, r, s), "load_reader");
        check(sys::mlx_io_reader_free(r), "free reader");
        assert_close(&b.values(), &[1.0, 2.5, -3.0, 4.0], 0.0);
        drop(b);
        // The CPU stream's worker drops its copy of the finished task (which holds the
        // reader) on its own thread, possibly just after `values()` returned.
        check(sys::mlx_synchronize(s), "synchronize");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while IO_FREES.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(
            IO_FREES.load(Ordering::SeqCst),
            2,
            "freed with the last array"
        );

        // safetensors through writer/reader, with metadata.
        let params = sys::mlx_map_string_to_array_new();
        sys::mlx_map_string_to_array_insert(params, c"w".as_ptr(), a.0);
        let meta = sys::mlx_map_string_to_string_new();
        sys::mlx_map_string_to_string_insert(meta, c"k".as_ptr(), c"v".as_ptr());
        let file = Box::into_raw(Box::<MemFile>::default()) as *mut c_void;
        let w = sys::mlx_io_writer_new(file, vtable());
        check(
            sys::mlx_save_safetensors_writer(w, params, meta),
            "save safetensors",
        );
        let st = mem(file).data.clone();
        sys::mlx_io_writer_free(w);
        let file = Box::into_raw(Box::new(MemFile {
            data: st,
            ..Default::default()
        })) as *mut c_void;
        let r = sys::mlx_io_reader_new(file, vtable());
        let mut arrays = sys::mlx_map_string_to_array_new();
        let mut strings = sys::mlx_map_string_to_string_new();
        check(
            sys::mlx_load_safetensors_reader(&mut arrays, &mut strings, r, s),
            "load safetensors",
        );
        sys::mlx_io_reader_free(r);
        let mut w_back = Arr::empty();
        check(
            sys::mlx_map_string_to_array_get(&mut w_back.0, arrays, c"w".as_ptr()),
            "get w",
        );
        assert_close(&w_back.values(), &[1.0, 2.5, -3.0, 4.0], 0.0);
        let mut v: *const c_char = std::ptr::null();
        check(
            sys::mlx_map_string_to_string_get(&mut v, strings, c"k".as_ptr()),
            "get k",
        );
        assert_eq!(CStr::from_ptr(v).to_str(), Ok("v"));
        for m in [params, arrays] {
            sys::mlx_map_string_to_array_free(m);
        }
        for m in [meta, strings] {
            sys::mlx_map_string_to_string_free(m);
        }

        // A reader that delivers short reads fails the load with an error.
        let file = Box::into_raw(Box::new(MemFile {
            data: bytes,
            short: true,
            ..Default::default()
        })) as *mut c_void;
        let r = sys::mlx_io_reader_new(file, vtable());
        let mut c = Arr::empty();
        assert_ne!(sys::mlx_load_reader(&mut c.0, r, s), 0);
        assert!(last_error().contains("memfile"), "{}", last_error());
        sys::mlx_io_reader_free(r);
        sys::mlx_stream_free(s);
    }
}

#[test]
fn gguf_objects() {
    unsafe {
        let s = stream();
        let g = sys::mlx_io_gguf_new();
        let w = f32s(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let m = f32s(&[0.5], &[1]);
        check(
            sys::mlx_io_gguf_set_array(g, c"w".as_ptr(), w.0),
            "set array",
        );
        check(
            sys::mlx_io_gguf_set_metadata_array(g, c"scale".as_ptr(), m.0),
            "meta array",
        );
        check(
            sys::mlx_io_gguf_set_metadata_string(g, c"name".as_ptr(), c"zmlx".as_ptr()),
            "meta string",
        );
        let names = [c"a".as_ptr(), c"b".as_ptr()];
        let vs = sys::mlx_vector_string_new_data(names.as_ptr() as *mut *const c_char, 2);
        check(
            sys::mlx_io_gguf_set_metadata_vector_string(g, c"tokens".as_ptr(), vs),
            "meta strings",
        );
        sys::mlx_vector_string_free(vs);

        let path = temp_path("t.gguf");
        let file = cstr(path.to_str().expect("utf-8 temp path"));
        check(sys::mlx_save_gguf(file.as_ptr(), g), "save gguf");
        sys::mlx_io_gguf_free(g);

        let mut g = sys::mlx_io_gguf_new();
        check(sys::mlx_load_gguf(&mut g, file.as_ptr(), s), "load gguf");
        let mut keys = sys::mlx_vector_string_new();
        check(sys::mlx_io_gguf_get_keys(&mut keys, g), "keys");
        assert_eq!(sys::mlx_vector_string_size(keys), 1);
        sys::mlx_vector_string_free(keys);
        let mut back = Arr::empty();
        check(
            sys::mlx_io_gguf_get_array(&mut back.0, g, c"w".as_ptr()),
            "get",
        );
        assert_close(&back.values(), &[1.0, 2.0, 3.0, 4.0], 0.0);
        let mut name = sys::mlx_string_new();
        check(
            sys::mlx_io_gguf_get_metadata_string(&mut name, g, c"name".as_ptr()),
            "name",
        );
        assert_eq!(
            CStr::from_ptr(sys::mlx_string_data(name)).to_str(),
            Ok("zmlx")
        );
        sys::mlx_string_free(name);
        let mut toks = sys::mlx_vector_string_new();
        check(
            sys::mlx_io_gguf_get_metadata_vector_string(&mut toks, g, c"tokens".as_ptr()),
            "tokens",
        );
        assert_eq!(sys::mlx_vector_string_size(toks), 2);
        sys::mlx_vector_string_free(toks);

        // mlx-c's statuses: 2 = no such key, 3 = another kind of metadata (no error reported).
        let mut flag = true;
        assert_eq!(
            sys::mlx_io_gguf_has_metadata_string(&mut flag, g, c"absent".as_ptr()),
            2
        );
        assert!(!flag);
        check(
            sys::mlx_io_gguf_has_metadata_array(&mut flag, g, c"name".as_ptr()),
            "has",
        );
        assert!(!flag);
        check(
            sys::mlx_io_gguf_has_metadata_string(&mut flag, g, c"name".as_ptr()),
            "has",
        );
        assert!(flag);
        let mut x = Arr::empty();
        assert_eq!(
            sys::mlx_io_gguf_get_metadata_array(&mut x.0, g, c"name".as_ptr()),
            3
        );
        assert_eq!(
            sys::mlx_io_gguf_get_array(&mut x.0, g, c"absent".as_ptr()),
            2
        );
        sys::mlx_io_gguf_free(g);
        sys::mlx_stream_free(s);
        let _ = std::fs::remove_file(path);
    }
}

// --- graphs, distributed, backends, ops -------------------------------------------------------------

extern "C" {
    fn fopen(path: *const c_char, mode: *const c_char) -> *mut sys::FILE;
    fn fclose(f: *mut sys::FILE) -> c_int;
}

#[test]
fn graph_printing() {
    unsafe {
        let s = stream();
        let a = f32s(&[1.0, 2.0], &[2]);
        let mut b = Arr::empty();
        check(sys::mlx_exp(&mut b.0, a.0, s), "exp");
        let namer = sys::mlx_node_namer_new();
        check(
            sys::mlx_node_namer_set_name(namer, a.0, c"input_a".as_ptr()),
            "set name",
        );
        let mut name: *const c_char = std::ptr::null();
        check(
            sys::mlx_node_namer_get_name(&mut name, namer, a.0),
            "get name",
        );
        assert_eq!(CStr::from_ptr(name).to_str(), Ok("input_a"));
        let outputs = Vec_::of(&[&b]);
        let path = temp_path("graph.dot");
        let file = cstr(path.to_str().expect("utf-8 temp path"));
        let f = fopen(file.as_ptr(), c"w".as_ptr());
        assert!(!f.is_null());
        check(sys::mlx_export_to_dot(f, namer, outputs.0), "dot");
        check(
            sys::mlx_print_graph(f, sys::mlx_node_namer_new(), outputs.0),
            "print",
        );
        fclose(f);
        let text = std::fs::read_to_string(&path).expect("graph file");
        assert!(
            text.contains("digraph") && text.contains("input_a") && text.contains("Exp"),
            "{text}"
        );
        assert_ne!(
            sys::mlx_print_graph(std::ptr::null_mut(), namer, outputs.0),
            0
        );
        sys::mlx_node_namer_free(namer);
        sys::mlx_stream_free(s);
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn distributed_singleton_group() {
    unsafe {
        let mut group = sys::mlx_distributed_group_new();
        check(
            sys::mlx_distributed_init(&mut group, false, c"any".as_ptr()),
            "init",
        );
        assert_eq!(sys::mlx_distributed_group_size(group), 1);
        assert_eq!(sys::mlx_distributed_group_rank(group), 0);
        let x = f32s(&[1.0, 2.0], &[2]);
        let s = stream();
        let mut y = Arr::empty();
        check(
            sys::mlx_distributed_all_sum(&mut y.0, x.0, group, s),
            "all_sum",
        );
        assert_close(&y.values(), &[1.0, 2.0], 0.0);
        // The empty group handle means the global group.
        check(
            sys::mlx_distributed_all_max(&mut y.0, x.0, sys::mlx_distributed_group_new(), s),
            "all_max",
        );
        assert_close(&y.values(), &[1.0, 2.0], 0.0);
        assert_eq!(
            sys::mlx_distributed_group_size(sys::mlx_distributed_group_new()),
            -1
        );
        sys::mlx_distributed_group_free(group);
        sys::mlx_stream_free(s);
    }
}

#[test]
fn backend_stubs_of_a_cpu_build() {
    if sys::MLX_BACKEND != "cpu" {
        return;
    }
    unsafe {
        let mut avail = true;
        check(sys::mlx_metal_is_available(&mut avail), "metal available");
        assert!(!avail);
        check(sys::mlx_cuda_is_available(&mut avail), "cuda available");
        assert!(!avail);
        assert_ne!(sys::mlx_metal_start_capture(c"/tmp/x".as_ptr()), 0);
        assert!(last_error().contains("Metal"), "{}", last_error());

        let inputs = sys::mlx_vector_string_new_value(c"a".as_ptr());
        let outputs = sys::mlx_vector_string_new_value(c"out".as_ptr());
        let k = sys::mlx_fast_metal_kernel_new(
            c"copy".as_ptr(),
            inputs,
            outputs,
            c"out[0] = a[0];".as_ptr(),
            c"".as_ptr(),
            true,
            false,
        );
        assert!(!k.ctx.is_null(), "{}", last_error());
        let cfg = sys::mlx_fast_metal_kernel_config_new();
        let shape = [1];
        check(
            sys::mlx_fast_metal_kernel_config_add_output_arg(
                cfg,
                shape.as_ptr(),
                1,
                sys::mlx_dtype__MLX_FLOAT32,
            ),
            "output arg",
        );
        check(
            sys::mlx_fast_metal_kernel_config_set_grid(cfg, 1, 1, 1),
            "grid",
        );
        check(
            sys::mlx_fast_metal_kernel_config_add_template_arg_int(cfg, c"N".as_ptr(), 1),
            "template",
        );
        let a = f32s(&[1.0], &[1]);
        let ins = Vec_::of(&[&a]);
        let mut outs = Vec_::new();
        let s = stream();
        assert_ne!(
            sys::mlx_fast_metal_kernel_apply(&mut outs.0, k, ins.0, cfg, s),
            0
        );
        assert!(last_error().contains("[metal_kernel]"), "{}", last_error());
        sys::mlx_fast_metal_kernel_config_free(cfg);
        sys::mlx_fast_metal_kernel_free(k);

        let ck = sys::mlx_fast_cuda_kernel_new(
            c"copy".as_ptr(),
            inputs,
            outputs,
            c"out[0] = a[0];".as_ptr(),
            c"".as_ptr(),
            true,
            0,
        );
        assert!(ck.ctx.is_null());
        assert!(last_error().contains("CUDA"), "{}", last_error());
        sys::mlx_vector_string_free(inputs);
        sys::mlx_vector_string_free(outputs);
        sys::mlx_stream_free(s);
    }
}

#[test]
fn generated_ops_fft_linalg_random() {
    unsafe {
        let s = stream();
        // irfft(rfft(x)) == x
        let x = f32s(&[1.0, -2.0, 0.5, 3.0], &[4]);
        let mut f = Arr::empty();
        check(
            sys::mlx_fft_rfft(
                &mut f.0,
                x.0,
                4,
                -1,
                sys::mlx_fft_norm__MLX_FFT_NORM_BACKWARD,
                s,
            ),
            "rfft",
        );
        let mut back = Arr::empty();
        check(
            sys::mlx_fft_irfft(
                &mut back.0,
                f.0,
                4,
                -1,
                sys::mlx_fft_norm__MLX_FFT_NORM_BACKWARD,
                s,
            ),
            "irfft",
        );
        assert_close(&back.values(), &[1.0, -2.0, 0.5, 3.0], 1e-6);
        assert_ne!(
            sys::mlx_fft_fft(&mut f.0, x.0, 4, -1, 7 as sys::mlx_fft_norm, s),
            0,
            "invalid norm"
        );

        // inv(A) @ A == I, and both halves of qr come back
        let a = f32s(&[4.0, 1.0, 2.0, 3.0], &[2, 2]);
        let mut inv = Arr::empty();
        check(sys::mlx_linalg_inv(&mut inv.0, a.0, s), "inv");
        let mut prod = Arr::empty();
        check(sys::mlx_matmul(&mut prod.0, inv.0, a.0, s), "matmul");
        assert_close(&prod.values(), &[1.0, 0.0, 0.0, 1.0], 1e-5);
        let (mut q, mut r) = (Arr::empty(), Arr::empty());
        check(sys::mlx_linalg_qr(&mut q.0, &mut r.0, a.0, s), "qr");
        let mut qr = Arr::empty();
        check(sys::mlx_matmul(&mut qr.0, q.0, r.0, s), "q @ r");
        assert_close(&qr.values(), &[4.0, 1.0, 2.0, 3.0], 1e-5);
        let mut n = Arr::empty();
        check(
            sys::mlx_linalg_norm_l2(&mut n.0, x.0, std::ptr::null(), 0, false, s),
            "norm",
        );
        assert_close(&n.values(), &[(1.0f64 + 4.0 + 0.25 + 9.0).sqrt()], 1e-6);

        // the same key gives the same numbers
        let (mut k, mut u1, mut u2) = (Arr::empty(), Arr::empty(), Arr::empty());
        check(sys::mlx_random_key(&mut k.0, 1234), "key");
        let (lo, hi) = (f32s(&[0.0], &[]), f32s(&[1.0], &[]));
        let shape = [8];
        for u in [&mut u1, &mut u2] {
            check(
                sys::mlx_random_uniform(
                    &mut u.0,
                    lo.0,
                    hi.0,
                    shape.as_ptr(),
                    1,
                    sys::mlx_dtype__MLX_FLOAT32,
                    k.0,
                    s,
                ),
                "uniform",
            );
        }
        let (v1, v2) = (u1.values(), u2.values());
        assert_eq!(v1, v2);
        assert!(v1.iter().all(|&v| (0.0..1.0).contains(&v)));
        let (mut k1, mut k2) = (Arr::empty(), Arr::empty());
        check(sys::mlx_random_split(&mut k1.0, &mut k2.0, k.0, s), "split");
        assert_ne!(k1.values(), k2.values());
        sys::mlx_stream_free(s);
    }
}

#[test]
fn null_result_pointers_are_errors() {
    unsafe {
        let s = stream();
        let a = f32s(&[1.0], &[1]);
        assert_ne!(sys::mlx_add(std::ptr::null_mut(), a.0, a.0, s), 0);
        assert!(last_error().contains("null"), "{}", last_error());
        assert_ne!(
            sys::mlx_linalg_qr(std::ptr::null_mut(), std::ptr::null_mut(), a.0, s),
            0
        );
        assert_ne!(sys::mlx_get_active_memory(std::ptr::null_mut()), 0);
        assert_ne!(sys::mlx_metal_is_available(std::ptr::null_mut()), 0);
        let v = sys::mlx_vector_int_new_value(3);
        assert_ne!(sys::mlx_vector_int_get(std::ptr::null_mut(), v, 0), 0);
        sys::mlx_vector_int_free(v);
        let g = sys::mlx_io_gguf_new();
        assert_ne!(
            sys::mlx_io_gguf_has_metadata_array(std::ptr::null_mut(), g, c"k".as_ptr()),
            0
        );
        sys::mlx_io_gguf_free(g);
        let mut out = Vec_::new();
        assert_ne!(
            sys::mlx_closure_apply(&mut out.0, sys::mlx_closure_new(), out.0),
            0
        );
        assert_ne!(
            sys::mlx_closure_apply(std::ptr::null_mut(), sys::mlx_closure_new(), out.0),
            0
        );
        assert_eq!(out.len(), 0);
        sys::mlx_stream_free(s);
    }
}
