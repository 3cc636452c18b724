  m.def(
      "gather_qmm_combine",
      &mx::gather_qmm_combine,
      nb::arg(),
      nb::arg(),
      "scales"_a,
      "biases"_a.none(),
      "rhs_indices"_a,
      "scores"_a,
      "transpose"_a = true,
      "group_size"_a = nb::none(),
      "bits"_a = nb::none(),
      "mode"_a = "affine",
      nb::kw_only(),
      "bias"_a = nb::none(),
      "stream"_a = nb::none(),
      nb::sig(
          "def gather_qmm_combine(h: array, w: array, /, scales: array, biases: array | None, rhs_indices: array, scores: array, transpose: bool = True, group_size: int | None = None, bits: int | None = None, mode: str = 'affine', *, bias: array | None = None, stream: StreamOrDevice = None) -> array"),
      R"pbdoc(
        The down projection of a quantized Mixture-of-Experts layer and the
        score-weighted sum over the experts, fused.

        Equal to ``(scores[..., None, None] * gather_qmm(h, w, scales, biases,
        rhs_indices=rhs_indices, ...)).sum(axis=-3)`` (plus ``bias[rhs_indices]``
        per expert when given), accumulated in float32 with one rounding at
        the end. The batch shape of ``h`` and ``rhs_indices`` must end with
        the ``k`` axis that is summed over.

        On CPU streams this is one fused kernel for every quantization mode;
        elsewhere it is the composed graph. Gradients (with respect to ``h``,
        ``scores`` and ``bias``) and :func:`vmap` are those of the composed
        graph.

        Args:
            h (array): Input array ``[..., k, M, K]``.
            w (array): Quantized expert weights.
            scales (array): Scales of ``w``.
            biases (array, optional): Biases of ``w`` (``affine`` only).
            rhs_indices (array): Integer expert indices ``[..., k]``.
            scores (array): Weights of the experts ``[..., k]``.
            transpose (bool, optional): Multiply with the transposed weights.
              Default: ``True``.
            group_size (int, optional): See :func:`gather_qmm`. Default: ``None``.
            bits (int, optional): See :func:`gather_qmm`. Default: ``None``.
            mode (str, optional): The quantization mode. Default: ``"affine"``.
            bias (array, optional): Per-expert additive bias ``[E..., N]``.

        Returns:
            array: The combined result, of shape ``batch[:-1] + [M, N]``.
      )pbdoc");
  m.def(
      "fused_quantized_linear",
      &mx::fused_quantized_linear,
      nb::arg(),
      nb::arg(),
      "scales"_a,
      "biases"_a = nb::none(),
      "group_size"_a = nb::none(),
      "bits"_a = nb::none(),
      "mode"_a = "affine",
      nb::kw_only(),
      "bias"_a = nb::none(),
      "stream"_a = nb::none(),
      nb::sig(
          "def fused_quantized_linear(x: array, w: array, /, scales: array, biases: array | None = None, group_size: int | None = None, bits: int | None = None, mode: str = 'affine', *, bias: array | None = None, stream: StreamOrDevice = None) -> array"),
      R"pbdoc(
        A quantized linear layer accumulated in float32: ``x @ w.T + bias``
        with one rounding at the end.

        ``w`` is one quantized ``[N, K]`` matrix (the ``transpose=True`` layout
        of :func:`quantized_matmul`). On CPU streams this is the
        :func:`gather_qmm_combine` kernel with one expert; elsewhere it is
        :func:`quantized_matmul` (plus ``bias``).

        Args:
            x (array): Input array ``[..., K]``.
            w (array): Quantized matrix.
            scales (array): Scales of ``w``.
            biases (array, optional): Biases of ``w`` (``affine`` only).
            group_size (int, optional): See :func:`quantize`. Default: ``None``.
            bits (int, optional): See :func:`quantize`. Default: ``None``.
            mode (str, optional): The quantization mode. Default: ``"affine"``.
            bias (array, optional): Additive bias ``[N]``.

        Returns:
            array: The result ``[..., N]``.
      )pbdoc");
