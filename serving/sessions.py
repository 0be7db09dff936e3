"""ONNX Runtime sessions of one export folder: providers, the I/O contract, warm-up.

:class:`ModelRuntime` owns ONE ``InferenceSession`` per ONNX file (encoder and head), shared by
every request of the server (and used by ``python -m serving.predict``). The encoder is loaded with
the preprocessing graph of :mod:`serving.pixel_graph` in front, so it takes the eval transform's
``(N, H, W, 3)`` uint8 pixels and does ``/255``, ``- mean``, ``/ std`` itself. Which execution
providers run the sessions is decided in one place, :func:`choose_providers`. The files' inputs and
outputs are checked against the card (CONTRACTS "Export folder") before anything runs.
Micro-batching over the sessions lives in :mod:`serving.batching`.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from clce_core.export_folder import CARD_FILE, EMBEDDING, ENCODER_INPUT, LOGITS, ExportFolderError, ModelCard
from serving.pixel_graph import PIXELS, with_pixel_input

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# The server's batches vary in size (1 to max_batch, whatever the queue holds), so every option below
# is about shapes that change from call to call:
# - arena_extend_strategy kSameAsRequested: the arena grows by what a call asks for, not by doubling
#   (the default kNextPowerOfTwo can reserve about twice the memory a max_batch call needs);
# - cudnn_conv_algo_search HEURISTIC: cuDNN picks a convolution algorithm from its heuristics; the
#   default EXHAUSTIVE benchmarks every algorithm on each new input shape, so each batch size seen for
#   the first time stalls a request (seconds for a big model) and takes extra workspace memory;
# - do_copy_in_default_stream 1: input and output copies on the compute stream (no race between them).
CUDA_OPTIONS = {
    "device_id": "0",
    "arena_extend_strategy": "kSameAsRequested",
    "cudnn_conv_algo_search": "HEURISTIC",
    "do_copy_in_default_stream": "1",
}

Device = Literal["cpu", "cuda", "auto"]
#: Inputs or outputs of a graph: ``(name, shape)``, symbolic dimensions as None or strings.
IO = list[tuple[str, list[object]]]


def choose_providers(device: Device) -> list[str | tuple[str, dict[str, str]]]:
    """The execution providers for ``device``, in priority order.

    Args:
        device: ``"cpu"``: the CPU only. ``"cuda"``: CUDA, then the CPU; without the CUDA provider in
            this onnxruntime build, the CPU with a logged error (the server reports not ready).
            ``"auto"``: CUDA where this build has it, else the CPU, silently (the prediction CLI).
    """
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in available:
        return [(CUDA_PROVIDER, dict(CUDA_OPTIONS)), CPU_PROVIDER]
    if device == "cuda":
        logger.error(
            "CLCE_DEVICE=cuda but this onnxruntime build has no %s (available: %s); install "
            "onnxruntime-gpu instead of onnxruntime. Running on the CPU; /health/ready reports not ready.",
            CUDA_PROVIDER,
            ", ".join(available),
        )
    return [CPU_PROVIDER]


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _graph_io(model: onnx.ModelProto) -> tuple[IO, IO]:
    """``(inputs, outputs)`` of an ONNX graph as ``(name, shape)``; a shape's symbolic dims are None."""

    def shape(value: onnx.ValueInfoProto) -> list[object]:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else None for d in dims]

    initialisers = {t.name for t in model.graph.initializer}
    inputs = [(v.name, shape(v)) for v in model.graph.input if v.name not in initialisers]
    return inputs, [(v.name, shape(v)) for v in model.graph.output]


class ModelRuntime:
    """The encoder and head sessions of one export folder.

    Args:
        card: The verified export folder (:func:`clce_core.read_card`).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (see :func:`choose_providers`).
        intra_op_threads: ONNX Runtime intra-op threads; 0 lets it choose.
        spinning: Whether idle intra-op threads spin (fast hand-over, but they burn CPU that image
            decoding could use).

    Raises:
        ExportFolderError: a file ONNX Runtime cannot load, or inputs/outputs that break the contract.
    """

    def __init__(
        self, card: ModelCard, device: Device = "cpu", intra_op_threads: int = 0, spinning: bool = False
    ) -> None:
        self.card = card
        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: fp16 graphs log a warning per CPU fallback node
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers = choose_providers(device)
        pre = card.preprocess
        try:
            encoder_model = onnx.load(str(card.encoder_path))  # external data, if any, from beside it
            encoder_io = _graph_io(encoder_model)
            self.head = ort.InferenceSession(str(card.head_path), options, providers=providers)
            head_io = (
                [(i.name, list(i.shape)) for i in self.head.get_inputs()],
                [(o.name, list(o.shape)) for o in self.head.get_outputs()],
            )
            self._check_io(*encoder_io, *head_io)
            composed = with_pixel_input(
                encoder_model, pre.input_size[1], pre.input_size[2], pre.mean, pre.std
            )
            self.encoder = ort.InferenceSession(composed, options, providers=providers)
        except ExportFolderError:
            raise
        except Exception as e:  # onnx's and onnxruntime's own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ExportFolderError(
                f"ONNX Runtime cannot load the model in {card.model_dir}: {first}"
            ) from None

    @property
    def providers(self) -> list[str]:
        """The encoder session's execution providers, in priority order."""
        return list(self.encoder.get_providers())

    @property
    def cuda_active(self) -> bool:
        """Whether the CUDA execution provider really runs both sessions."""
        return all(s.get_providers()[0] == CUDA_PROVIDER for s in (self.encoder, self.head))

    def _check_io(self, enc_in: IO, enc_out: IO, head_in: IO, head_out: IO) -> None:
        """The files' inputs and outputs ``(name, shape)`` against the contract and the card."""
        where = self.card.model_dir
        encoder, head = self.card.encoder_path.name, self.card.head_path.name
        names = {
            f"{encoder} inputs": ([n for n, _ in enc_in], [ENCODER_INPUT]),
            f"{encoder} outputs": ([n for n, _ in enc_out], [EMBEDDING]),
            f"{head} inputs": ([n for n, _ in head_in], [EMBEDDING]),
            f"{head} outputs": ([n for n, _ in head_out], [LOGITS]),
        }
        for what, (found, wanted) in names.items():
            if found[:1] != wanted or (what.endswith("inputs") and len(found) != 1):
                raise ExportFolderError(f"{where}: {what} are {found}, the export contract says {wanted}")
        _, c, h, w = ([*enc_in[0][1]] + [None] * 4)[:4]
        expected = self.card.preprocess.input_size
        for got, want, name in (
            (c, expected[0], "channels"),
            (h, expected[1], "height"),
            (w, expected[2], "width"),
        ):
            if _dim(got) is not None and got != want:
                raise ExportFolderError(
                    f"{where}: {encoder} takes {name} {got} but {CARD_FILE} input_size says {want}"
                )
        dim = self.card.embedding_dim
        for got, name in ((enc_out[0][1], "encoder output"), (head_in[0][1], "head input")):
            if len(got) != 2 or (_dim(got[1]) is not None and got[1] != dim):
                raise ExportFolderError(
                    f"{where}: {name} has shape {got}, {CARD_FILE} embedding_dim is {dim}"
                )
        n_classes = len(self.card.labels)
        got = head_out[0][1]
        if len(got) != 2 or (_dim(got[1]) is not None and got[1] != n_classes):
            raise ExportFolderError(
                f"{where}: head output has shape {got} but {CARD_FILE} lists {n_classes} labels"
            )

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocking inference.

        Args:
            pixels: ``(N, H, W, 3)`` uint8, the eval transform's crop
                (:meth:`clce_core.preprocessing.EvalTransform.decode` / ``to_uint8``).

        Returns:
            ``embedding`` ``(N, D)`` (un-normalised) and ``logits`` ``(N, C)``, float32.
        """
        embedding = self.encoder.run([EMBEDDING], {PIXELS: pixels})[0]  # (N, D)
        logits = self.head.run([LOGITS], {EMBEDDING: embedding})[0]  # (N, C)
        return np.asarray(embedding, dtype=np.float32), np.asarray(logits, dtype=np.float32)

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run zeros through both sessions once per batch size (allocations, kernel choice)."""
        _, h, w = self.card.preprocess.input_size
        for n in sorted(set(batch_sizes)):
            self.run(np.zeros((n, h, w, 3), dtype=np.uint8))
