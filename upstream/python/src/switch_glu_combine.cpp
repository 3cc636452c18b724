  m.def(
      "switch_glu_combine",
      &mx::switch_glu_combine,
      nb::arg(),
      "gate_w"_a,
      "gate_scales"_a,
      "gate_biases"_a.none(),
      "up_w"_a,
      "up_scales"_a,
      "up_biases"_a.none(),
      "down_w"_a,
      "down_scales"_a,
      "down_biases"_a.none(),
      "indices"_a,
      "scores"_a,
      "group_size"_a = nb::none(),
      "bits"_a = nb::none(),
      "mode"_a = "affine",
      nb::kw_only(),
      "activation"_a = "swiglu",
      "alpha"_a = nb::none(),
      "limit"_a = nb::none(),
      "gate_bias"_a = nb::none(),
      "up_bias"_a = nb::none(),
      "down_bias"_a = nb::none(),
      "stream"_a = nb::none(),
      nb::sig(
          "def switch_glu_combine(x: array, /, gate_w: array, gate_scales: array, gate_biases: array | None, up_w: array, up_scales: array, up_biases: array | None, down_w: array, down_scales: array, down_biases: array | None, indices: array, scores: array, group_size: int | None = None, bits: int | None = None, mode: str = 'affine', *, activation: str = 'swiglu', alpha: float | None = None, limit: float | None = None, gate_bias: array | None = None, up_bias: array | None = None, down_bias: array | None = None, stream: StreamOrDevice = None) -> array"),
      R"pbdoc(
        The expert block of a quantized Mixture-of-Experts layer after
        routing: :func:`gather_qmm_swiglu` followed by
        :func:`gather_qmm_combine`.

        ``x`` is ``[..., D]``, ``indices`` and ``scores`` are ``[..., k]``; the
        gate and up projections map ``D`` to the intermediate size and the down
        projection maps it back. All three share ``mode``, ``group_size`` and
        ``bits`` and use the ``transpose=True`` layout.

        Args:
            x (array): Input array ``[..., D]``.
            gate_w, gate_scales, gate_biases: The quantized gate projection.
            up_w, up_scales, up_biases: The quantized up projection.
            down_w, down_scales, down_biases: The quantized down projection.
            indices (array): Integer expert indices ``[..., k]``.
            scores (array): Weights of the experts ``[..., k]``.
            group_size (int, optional): See :func:`gather_qmm`. Default: ``None``.
            bits (int, optional): See :func:`gather_qmm`. Default: ``None``.
            mode (str, optional): The quantization mode. Default: ``"affine"``.
            activation (str, optional): As :func:`gather_qmm_swiglu`.
            alpha (float, optional): As :func:`gather_qmm_swiglu`.
            limit (float, optional): As :func:`gather_qmm_swiglu`.
            gate_bias (array, optional): Per-expert bias of the gate projection.
            up_bias (array, optional): Per-expert bias of the up projection.
            down_bias (array, optional): Per-expert bias of the down projection.

        Returns:
            array: The layer's output ``[..., D]``.
      )pbdoc");
