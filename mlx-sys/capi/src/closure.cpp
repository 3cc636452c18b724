// zmlx mlx-sys: closures (closure.h): C callbacks as the std::functions MLX's transforms call.
#include "mlx/c/private/capi.h"

using namespace mlxc;

namespace {

// The user data of a `_new_func_payload` closure: `dtor(data)` runs when the last copy of the
// closure's std::function is destroyed (copies share it).
struct Payload {
  void* data;
  void (*dtor)(void*);
  Payload(void* d, void (*f)(void*)) : data(d), dtor(f) {}
  Payload(const Payload&) = delete;
  Payload& operator=(const Payload&) = delete;
  ~Payload() {
    if (dtor) {
      dtor(data);
    }
  }
};

// Calls the C callback `fun` with `args...` (and the payload, if any) and checks its status.
template <class Fun>
struct Callback {
  Fun fun;
  std::shared_ptr<Payload> payload; // null for `_new_func` closures
  const char* what;

  template <class... A>
  void operator()(A... args) const {
    auto before = error_count();
    int status;
    if constexpr (std::is_invocable_v<Fun, A..., void*>) {
      status = fun(args..., payload ? payload->data : nullptr);
    } else {
      status = fun(args...);
    }
    check_callback(status, what, before);
  }
};

// One adapter per closure kind: the C++ signature MLX calls, in terms of the C callback `cb`.
template <class Cb>
ClosureFn adapt(mlx_closure*, Cb cb) {
  return [cb](const Arrays& in) {
    Temp<mlx_vector_array> input(in);
    Slot<mlx_vector_array> out;
    cb(out.ptr(), input.h);
    return out.take(cb.what);
  };
}

template <class Cb>
ClosureKwargsFn adapt(mlx_closure_kwargs*, Cb cb) {
  return [cb](const Arrays& in, const ArrayMap& kwargs) {
    Temp<mlx_vector_array> input(in);
    Temp<mlx_map_string_to_array> named(kwargs);
    Slot<mlx_vector_array> out;
    cb(out.ptr(), input.h, named.h);
    return out.take(cb.what);
  };
}

template <class Cb>
ValueAndGradFn adapt(mlx_closure_value_and_grad*, Cb cb) {
  return [cb](const Arrays& in) {
    Temp<mlx_vector_array> input(in);
    Slot<mlx_vector_array> values;
    Slot<mlx_vector_array> grads;
    cb(values.ptr(), grads.ptr(), input.h);
    auto v = values.take(cb.what);
    return std::make_pair(std::move(v), grads.take(cb.what));
  };
}

template <class Cb>
CustomFn adapt(mlx_closure_custom*, Cb cb) {
  return [cb](const Arrays& primals, const Arrays& cotangents, const Arrays& outputs) {
    Temp<mlx_vector_array> in0(primals);
    Temp<mlx_vector_array> in1(cotangents);
    Temp<mlx_vector_array> in2(outputs);
    Slot<mlx_vector_array> out;
    cb(out.ptr(), in0.h, in1.h, in2.h);
    return out.take(cb.what);
  };
}

template <class Cb>
CustomJvpFn adapt(mlx_closure_custom_jvp*, Cb cb) {
  return [cb](const Arrays& primals, const Arrays& tangents, const std::vector<int>& argnums) {
    Temp<mlx_vector_array> in0(primals);
    Temp<mlx_vector_array> in1(tangents);
    Slot<mlx_vector_array> out;
    cb(out.ptr(), in0.h, in1.h, argnums.data(), argnums.size());
    return out.take(cb.what);
  };
}

template <class Cb>
CustomVmapFn adapt(mlx_closure_custom_vmap*, Cb cb) {
  return [cb](const Arrays& inputs, const std::vector<int>& in_axes) {
    Temp<mlx_vector_array> in0(inputs);
    Slot<mlx_vector_array> outputs;
    Slot<mlx_vector_int> out_axes;
    cb(outputs.ptr(), out_axes.ptr(), in0.h, in_axes.data(), in_axes.size());
    auto o = outputs.take(cb.what);
    return std::make_pair(std::move(o), out_axes.take(cb.what));
  };
}

// `_new_func` / `_new_func_payload`: the payload is owned from the first line on, so that a failure
// still runs its destructor.
template <class H, class Fun>
H from_callback(Fun fun, void* data, void (*dtor)(void*)) {
  auto payload = dtor || data ? std::make_shared<Payload>(data, dtor) : nullptr;
  return guard_value(H{}, [&] {
    if (fun == nullptr) {
      throw std::invalid_argument(std::string(Cpp<H>::name) + ": null callback");
    }
    return make<H>(adapt(static_cast<H*>(nullptr), Callback<Fun>{fun, payload, Cpp<H>::name}));
  });
}

} // namespace

// The functions every closure kind has; `...` are the callback's parameters (without the payload).
#define MLXC_CLOSURE(H, ...)                                                                    \
  extern "C" H H##_new(void) {                                                                  \
    return H{nullptr};                                                                          \
  }                                                                                             \
  extern "C" int H##_free(H cls) {                                                              \
    return drop(cls);                                                                           \
  }                                                                                             \
  extern "C" int H##_set(H* cls, const H src) {                                                 \
    return guard([&] { put(cls, get(src)); });                                                  \
  }                                                                                             \
  extern "C" H H##_new_func(int (*fun)(__VA_ARGS__)) {                                          \
    return from_callback<H>(fun, nullptr, nullptr);                                             \
  }                                                                                             \
  extern "C" H H##_new_func_payload(int (*fun)(__VA_ARGS__, void*), void* payload, void (*dtor)(void*)) { \
    return from_callback<H>(fun, payload, dtor);                                                \
  }

MLXC_CLOSURE(mlx_closure, mlx_vector_array*, const mlx_vector_array)
MLXC_CLOSURE(mlx_closure_kwargs, mlx_vector_array*, const mlx_vector_array, const mlx_map_string_to_array)
MLXC_CLOSURE(mlx_closure_value_and_grad, mlx_vector_array*, mlx_vector_array*, const mlx_vector_array)
MLXC_CLOSURE(mlx_closure_custom, mlx_vector_array*, const mlx_vector_array, const mlx_vector_array, const mlx_vector_array)
MLXC_CLOSURE(mlx_closure_custom_jvp, mlx_vector_array*, const mlx_vector_array, const mlx_vector_array, const int*, size_t)
MLXC_CLOSURE(mlx_closure_custom_vmap, mlx_vector_array*, mlx_vector_int*, const mlx_vector_array, const int*, size_t)
#undef MLXC_CLOSURE

extern "C" mlx_closure mlx_closure_new_unary(int (*fun)(mlx_array*, const mlx_array)) {
  return guard_value(mlx_closure{}, [&] {
    if (fun == nullptr) {
      throw std::invalid_argument("mlx_closure_new_unary: null callback");
    }
    return make<mlx_closure>(ClosureFn([fun](const Arrays& in) {
      if (in.size() != 1) {
        throw std::invalid_argument(
            "mlx_closure (unary): expected 1 input, got " + std::to_string(in.size()));
      }
      Temp<mlx_array> input(in[0]);
      Slot<mlx_array> out;
      auto before = error_count();
      check_callback(fun(out.ptr(), input.h), "mlx_closure (unary)", before);
      return Arrays{out.take("mlx_closure (unary)")};
    }));
  });
}

extern "C" int mlx_closure_apply(mlx_vector_array* res, mlx_closure cls, const mlx_vector_array input) {
  return guard([&] { put(res, get(cls)(get(input))); });
}

extern "C" int mlx_closure_kwargs_apply(
    mlx_vector_array* res,
    mlx_closure_kwargs cls,
    const mlx_vector_array input_0,
    const mlx_map_string_to_array input_1) {
  return guard([&] { put(res, get(cls)(get(input_0), get(input_1))); });
}

extern "C" int mlx_closure_value_and_grad_apply(
    mlx_vector_array* res_0,
    mlx_vector_array* res_1,
    mlx_closure_value_and_grad cls,
    const mlx_vector_array input) {
  return put_pair(res_0, res_1, [&] { return get(cls)(get(input)); });
}

extern "C" int mlx_closure_custom_apply(
    mlx_vector_array* res,
    mlx_closure_custom cls,
    const mlx_vector_array input_0,
    const mlx_vector_array input_1,
    const mlx_vector_array input_2) {
  return guard([&] { put(res, get(cls)(get(input_0), get(input_1), get(input_2))); });
}

extern "C" int mlx_closure_custom_jvp_apply(
    mlx_vector_array* res,
    mlx_closure_custom_jvp cls,
    const mlx_vector_array input_0,
    const mlx_vector_array input_1,
    const int* input_2,
    size_t input_2_num) {
  return guard([&] {
    put(res, get(cls)(get(input_0), get(input_1), ints(input_2, input_2_num, "input_2")));
  });
}

extern "C" int mlx_closure_custom_vmap_apply(
    mlx_vector_array* res_0,
    mlx_vector_int* res_1,
    mlx_closure_custom_vmap cls,
    const mlx_vector_array input_0,
    const int* input_1,
    size_t input_1_num) {
  return put_pair(res_0, res_1, [&] { return get(cls)(get(input_0), ints(input_1, input_1_num, "input_1")); });
}
