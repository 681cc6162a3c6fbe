"""Start a tf.data service dispatcher or worker, for trainer.task --tf_data_service.

    python -m trainer.data_service dispatcher --port 5050
    python -m trainer.data_service worker --dispatcher HOST:5050 --port 5051 --host WORKER_HOST
    python -m trainer.task --config configs/default.yaml --data_dir DIR --model_dir DIR \\
        --tf_data_service grpc://HOST:5050

The workers read, shuffle and decode the training data and send the trainer its batches, so the
trainer's CPU only trains; each worker must reach --data_dir itself (same path or gs://). Both
servers listen on the given port on every interface, with no authentication: keep them on a
private network. --host is the name the trainer reaches a worker by. Port 0 picks a free port;
the first line on stdout says which. The server runs until stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import socket
import time

from pipeline import cli

PROG = "trainer.data_service"


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    dispatcher = roles.add_parser("dispatcher", help="The service's entry point, which trainers and workers call.")
    dispatcher.add_argument("--port", type=cli.non_negative_int, default=5050, help="0: a free port.")
    dispatcher.add_argument("--host", default="localhost", help="The name others reach this machine by.")
    worker = roles.add_parser("worker", help="Makes batches for the trainers, as the dispatcher assigns.")
    worker.add_argument("--dispatcher", required=True, metavar="HOST:PORT", help="The dispatcher's address.")
    worker.add_argument("--port", type=cli.non_negative_int, default=0, help="0: a free port.")
    worker.add_argument("--host", default="localhost", help="The name the trainers reach this machine by.")
    for subparser in (dispatcher, worker):
        subparser.error = parser.error  # one-line errors from the subcommands too
    return parser.parse_args(argv)


def check_dispatcher(address: str, timeout_seconds: float = 10):
    """A UsageError unless something listens at address (grpc://HOST:PORT); the service's client would wait forever."""
    host, separator, port = address.removeprefix("grpc://").rpartition(":")
    if not address.startswith("grpc://") or not separator or not port.isdigit():
        raise cli.UsageError(f"--tf_data_service {address}: expected grpc://HOST:PORT, e.g. grpc://localhost:5050")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_seconds).close()
    except OSError as error:
        raise cli.UsageError(
            f"--tf_data_service {address}: no dispatcher answers there ({error.strerror or error}); "
            f"start one with `python -m {PROG} dispatcher --port {port}`"
        ) from None


def start(args):
    """The started server and the line that says where it listens."""
    import tensorflow as tf

    service = tf.data.experimental.service
    if args.role == "dispatcher":
        server = service.DispatchServer(service.DispatcherConfig(port=args.port))
        port = server.target.rsplit(":", 1)[1]
        return server, f"dispatcher listening on port {port}; trainers use --tf_data_service grpc://{args.host}:{port}"
    dispatcher = args.dispatcher.removeprefix("grpc://")
    if ":" not in dispatcher:
        raise cli.UsageError(f"--dispatcher {args.dispatcher}: expected HOST:PORT, e.g. localhost:5050")
    # %port% is filled in by the worker with the port it bound, so that port 0 works too.
    config = service.WorkerConfig(dispatcher_address=dispatcher, worker_address=f"{args.host}:%port%", port=args.port)
    return service.WorkerServer(config), f"worker of dispatcher {dispatcher} started"


def main(argv=None):
    args = parse_args(argv)
    cli.quiet_tensorflow()
    server, line = start(args)
    print(f"[{PROG}] {line}", flush=True)
    # The server runs on its own threads; sleeping here (not server.join(), which holds off Python's signal
    # handling) lets Ctrl-C end the process. SIGTERM ends it by default.
    try:
        while server is not None:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run_main(PROG, main))
