  m.def(
      "gather_qmm_swiglu",
      &mx::gather_qmm_swiglu,
      nb::arg(),
      nb::arg(),
      "gate_scales"_a,
      "gate_biases"_a.none(),
      "up_w"_a,
      "up_scales"_a,
      "up_biases"_a.none(),
      "lhs_indices"_a = nb::none(),
      "rhs_indices"_a = nb::none(),
      "transpose"_a = true,
      "group_size"_a = nb::none(),
      "bits"_a = nb::none(),
      "mode"_a = "affine",
      nb::kw_only(),
      "sorted_indices"_a = false,
      "activation"_a = "swiglu",
      "alpha"_a = nb::none(),
      "limit"_a = nb::none(),
      "gate_bias"_a = nb::none(),
      "up_bias"_a = nb::none(),
      "stream"_a = nb::none(),
      nb::sig(
          "def gather_qmm_swiglu(x: array, gate_w: array, /, gate_scales: array, gate_biases: array | None, up_w: array, up_scales: array, up_biases: array | None, lhs_indices: array | None = None, rhs_indices: array | None = None, transpose: bool = True, group_size: int | None = None, bits: int | None = None, mode: str = 'affine', *, sorted_indices: bool = False, activation: str = 'swiglu', alpha: float | None = None, limit: float | None = None, gate_bias: array | None = None, up_bias: array | None = None, stream: StreamOrDevice = None) -> array"),
      R"pbdoc(
        The gate and up projections of a quantized Mixture-of-Experts layer
        and the gated activation, fused.

        Equal to ``act(gather_qmm(x, gate_w, ...), gather_qmm(x, up_w, ...))``
        with the same indices and quantization for both projections (see
        :func:`gather_qmm`), without materializing the two projections.

        ``activation`` is ``"swiglu"`` (``silu(g) * u``) or ``"gpt_oss"``
        (``g = min(g, limit)``, ``u = clip(u, -limit, limit)``,
        ``g * sigmoid(alpha * g) * (u + 1)``, ``alpha`` default ``1.702``,
        ``limit`` default ``7.0``). ``gate_bias`` and ``up_bias`` are optional
        per-expert additive biases of shape ``[E..., N]`` added before the
        activation.

        On CPU streams this is one fused kernel accumulating in float32 for
        every quantization mode; elsewhere it is the composed graph.
        Gradients (with respect to ``x`` and the additive biases) and
        :func:`vmap` are those of the composed graph.

        Args:
            x (array): Input array ``[..., M, K]``.
            gate_w (array): Quantized gate projection.
            gate_scales (array): Scales of ``gate_w``.
            gate_biases (array, optional): Biases of ``gate_w`` (``affine`` only).
            up_w (array): Quantized up projection, the same shape as ``gate_w``.
            up_scales (array): Scales of ``up_w``.
            up_biases (array, optional): Biases of ``up_w`` (``affine`` only).
            lhs_indices (array, optional): Integer indices for ``x``. Default: ``None``.
            rhs_indices (array, optional): Integer indices for the experts. Default: ``None``.
            transpose (bool, optional): Multiply with the transposed weights.
              Default: ``True``.
            group_size (int, optional): See :func:`gather_qmm`. Default: ``None``.
            bits (int, optional): See :func:`gather_qmm`. Default: ``None``.
            mode (str, optional): The quantization mode. Default: ``"affine"``.
            sorted_indices (bool, optional): The indices are sorted by expert.
              Default: ``False``.
            activation (str, optional): ``"swiglu"`` or ``"gpt_oss"``.
              Default: ``"swiglu"``.
            alpha (float, optional): ``gpt_oss`` only. Default: ``None``.
            limit (float, optional): ``gpt_oss`` only. Default: ``None``.
            gate_bias (array, optional): Per-expert bias of the gate projection.
            up_bias (array, optional): Per-expert bias of the up projection.

        Returns:
            array: The activation, of shape ``batch + [M, N]``.
      )pbdoc");
