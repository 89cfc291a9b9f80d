"""A gRPC server and client without generated code (raw-bytes messages), for ztrace's tests.

    python3 grpc_pair.py server            -> serves demo.Greeter/SayHello and demo.Greeter/Fail on
                                              127.0.0.1, prints "PORT <n>" once listening
    python3 grpc_pair.py client PORT N     -> N SayHello calls and one Fail call on one channel
"""

import sys
import time
from concurrent import futures

import grpc


def say_hello(request, context):
    return b"hello " + request


def fail(request, context):
    context.abort(grpc.StatusCode.INTERNAL, "deliberate failure")


def server():
    handlers = grpc.method_handlers_generic_handler(
        "demo.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    srv.add_generic_rpc_handlers((handlers,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    print("PORT", port, flush=True)
    srv.wait_for_termination()


def client(port, n):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        hello = channel.unary_unary("/demo.Greeter/SayHello")
        for i in range(n):
            assert hello(b"call %d" % i, timeout=10) == b"hello call %d" % i
        try:
            channel.unary_unary("/demo.Greeter/Fail")(b"x", timeout=10)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INTERNAL
    time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(int(sys.argv[2]), int(sys.argv[3]))
