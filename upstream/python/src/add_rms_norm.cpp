  m.def(
      "add_rms_norm",
      &mx::add_rms_norm,
      nb::arg(),
      nb::arg(),
      "weight"_a.none(),
      "eps"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig(
          "def add_rms_norm(x: array, residual: array, /, weight: array | None, eps: float, *, stream: StreamOrDevice = None) -> tuple[array, array]"),
      R"pbdoc(
        Residual add followed by RMS normalization, in one pass.

        Computes ``h = x + residual`` and ``y = rms_norm(h, weight, eps)``
        (see :func:`fast.rms_norm`) and returns both: ``h`` continues the
        residual stream and ``y`` feeds the next sublayer.

        ``h`` is exactly :func:`add` of the inputs. ``y`` normalizes ``h`` as
        stored (rounded to its dtype) with float32 statistics and is rounded
        once to its dtype, the type promotion of ``h`` and ``weight``.

        On CPU streams this is one fused kernel; on other devices it is the
        graph of :func:`add` and :func:`fast.rms_norm`. Gradients and
        :func:`vmap` are those of that graph.

        Args:
            x (array): Input array with at least one dimension (``float32``,
              ``float16`` or ``bfloat16``).
            residual (array): Array of the same shape as ``x``.
            weight (array, optional): A multiplicative weight of the size of
              the last axis of ``x``. If ``None`` no scaling happens.
            eps (float): A small non-negative constant for numerical stability.

        Returns:
            tuple(array, array): ``h`` and ``y``.
      )pbdoc");
