"""The real plenum-gateway binary called by Python grpcio, with stubs generated
from proto/ by grpcio-tools: a client nobody here wrote reads what the gateway says.

  .venv/bin/python -m unittest tests/python/test_gateway_grpcio.py -v

The gateway's backends are test doubles served by grpcio in this process. The
binary is taken from target/release, like every other step of `make test` (built with
cargo when missing).
"""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from concurrent import futures
from pathlib import Path

import grpc
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
PROTOS = [
    "plenum/common/v1/common.proto",
    "plenum/detector/v1/detector.proto",
    "plenum/ocr/v1/ocr.proto",
    "plenum/gateway/v1/gateway.proto",
]


def generate_stubs(out: str) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{REPO / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + PROTOS) != 0:
        raise RuntimeError("grpcio-tools could not compile the protos")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "release" / "plenum-gateway"
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "plenum-gateway", "--bin", "plenum-gateway"],
                       cwd=REPO, check=True)
    return binary


class GatewayFromGrpcio(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        generate_stubs(cls.tmp.name)
        sys.path.insert(0, cls.tmp.name)
        common = importlib.import_module("plenum.common.v1.common_pb2")
        det = importlib.import_module("plenum.detector.v1.detector_pb2")
        det_grpc = importlib.import_module("plenum.detector.v1.detector_pb2_grpc")
        ocr = importlib.import_module("plenum.ocr.v1.ocr_pb2")
        ocr_grpc = importlib.import_module("plenum.ocr.v1.ocr_pb2_grpc")
        cls.gw = importlib.import_module("plenum.gateway.v1.gateway_pb2")
        cls.gw_grpc = importlib.import_module("plenum.gateway.v1.gateway_pb2_grpc")
        cls.detect_calls = []

        def box(x0, y0, x1, y1):
            return common.Box(x_min=x0, y_min=y0, x_max=x1, y_max=y1)

        outer = cls

        class FakeDetector(det_grpc.DetectorServicer):
            def Detect(self, request, context):
                outer.detect_calls.append((len(request.images), len(request.images[0]),
                                           dict(context.invocation_metadata()).get("traceparent")))
                found = [
                    det.Detection(box=box(100, 100, 122, 140), class_name="vav_box", score=0.9),
                    det.Detection(box=box(300, 300, 320, 320), class_name="damper", score=0.8),
                ]
                return det.DetectResponse(results=[det.ImageDetections(detections=found, width=1600, height=1200, tiles=1)])

        class FakeOcr(ocr_grpc.OcrServicer):
            def ReadText(self, request, context):
                return ocr.ReadTextResponse(lines=[
                    ocr.TextLine(box=box(127, 115, 175, 125), text="VAV-203", score=0.97),
                    ocr.TextLine(box=box(700, 500, 790, 515), text="OFFICE 204", score=0.9),
                ])

        cls.backends = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        det_grpc.add_DetectorServicer_to_server(FakeDetector(), cls.backends)
        ocr_grpc.add_OcrServicer_to_server(FakeOcr(), cls.backends)
        port = cls.backends.add_insecure_port("127.0.0.1:0")
        cls.backends.start()

        gateway_port = free_port()
        cls.process = subprocess.Popen(
            [str(gateway_binary()), "--listen", f"127.0.0.1:{gateway_port}", "--metrics-listen", "127.0.0.1:0",
             "--detector", f"http://127.0.0.1:{port}", "--ocr", f"http://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        cls.channel = grpc.insecure_channel(f"127.0.0.1:{gateway_port}")
        try:
            grpc.channel_ready_future(cls.channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            cls.tearDownClass()
            raise
        cls.stub = cls.gw_grpc.GatewayStub(cls.channel)
        cls.page = (REPO / "tests/pages/page_0000.png").read_bytes()

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.process.terminate()
        try:
            cls.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cls.process.kill()
        cls.backends.stop(grace=None)
        cls.tmp.cleanup()

    def test_analyze_joins_the_tag_to_its_symbol(self):
        gw = self.gw
        response = self.stub.Analyze(
            gw.AnalyzeRequest(image=self.page, request_id="py-1",
                              options=gw.AnalyzeOptions(include_unassigned_text=True)),
            timeout=10,
        )
        self.assertEqual(response.request_id, "py-1")
        self.assertEqual((response.width, response.height), (1600, 1200))
        vav, damper = response.symbols
        self.assertEqual((vav.class_name, vav.tag), ("vav_box", "VAV-203"))
        self.assertAlmostEqual(vav.tag_score, 0.97, places=5)
        self.assertEqual(vav.tag_box.x_min, 127)
        self.assertEqual(damper.tag, "")
        self.assertEqual(damper.tag_missing_reason, gw.TAG_MISSING_REASON_NO_TEXT_NEARBY)
        self.assertEqual([t.text for t in response.unassigned_text], ["OFFICE 204"])
        self.assertGreater(response.timings.total_us, 0)
        # The original bytes went on to the detector, one image per call.
        self.assertIn((1, len(self.page)), [c[:2] for c in self.detect_calls])

    def test_a_stream_answers_in_order(self):
        gw = self.gw
        requests = (gw.AnalyzeRequest(image=self.page, request_id=f"p{i}") for i in range(5))
        ids = [r.request_id for r in self.stub.AnalyzeStream(requests, timeout=20)]
        self.assertEqual(ids, [f"p{i}" for i in range(5)])

    def test_bad_input_is_invalid_argument_naming_the_field(self):
        gw = self.gw
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.Analyze(gw.AnalyzeRequest(image=b"not an image"), timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(raised.exception.details().startswith("image:"), raised.exception.details())
        with self.assertRaises(grpc.RpcError) as raised:
            self.stub.Analyze(gw.AnalyzeRequest(image=self.page, options=gw.AnalyzeOptions(score_threshold=2.0)),
                              timeout=10)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(raised.exception.details().startswith("options.score_threshold"))

    def test_a_short_deadline_is_deadline_exceeded_not_a_hang(self):
        started = time.monotonic()
        try:
            self.stub.Analyze(self.gw.AnalyzeRequest(image=self.page), timeout=0.001)
        except grpc.RpcError as error:
            self.assertEqual(error.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertLess(time.monotonic() - started, 2)


if __name__ == "__main__":
    unittest.main()
