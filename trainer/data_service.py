"""Start a tf.data service dispatcher or worker, for trainer.task --tf_data_service.

    python -m trainer.data_service dispatcher --port 5050 --workers WORKER_HOST:5051,WORKER_HOST2:5051
    python -m trainer.data_service worker --dispatcher HOST:5050 --port 5051 --host WORKER_HOST
    python -m trainer.task --config configs/default.yaml --data_dir DIR --model_dir DIR \\
        --tf_data_service grpc://HOST:5050

The workers read, shuffle and decode the training data and send the trainer its batches, so the
trainer's CPU only trains; each worker must reach --data_dir itself (same path or gs://). With
--workers (a fixed list; each worker then runs at its listed --host and --port) every worker reads
its own share of the run's input streams and the trainers get the very batches they would read
themselves, in order (trainer.input_pipeline.data_service_dataset); without it workers may come and go,
and a trainer takes batches in whatever order they come (it needs --set deterministic=false). Both
servers listen on the given port on every interface, with no authentication: keep them on a
private network. --host is the name the trainer reaches a worker by. Port 0 picks a free port;
the line that says the server is up (on stderr, and on stdout when that is not a terminal) says which.
A port already in use is refused. A worker waits up to --dispatcher_timeout seconds for its
dispatcher to answer, saying so, and once running says when it loses and regains contact with it.
The server runs until stopped: Ctrl-C or SIGTERM stop it with one line and exit code 0.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import time

from pipeline import cli

PROG = "trainer.data_service"
MAX_PORT = 65535
WATCH_SECONDS = 2  # how often a worker checks that its dispatcher still answers (a TCP connection, nothing more)
HEARTBEAT_MILLISECONDS = 1000


def port_number(text: str) -> int:
    port = cli.non_negative_int(text)
    if port > MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to {MAX_PORT}, got {port}")
    return port


def parse_args(argv=None):
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    roles = parser.add_subparsers(dest="role", required=True)
    dispatcher = roles.add_parser("dispatcher", help="The service's entry point, which trainers and workers call.")
    dispatcher.add_argument("--port", type=port_number, default=5050, help="0: a free port.")
    dispatcher.add_argument("--host", default="localhost", help="The name others reach this machine by.")
    dispatcher.add_argument(
        "--workers",
        metavar="HOST:PORT,...",
        help="The service's workers, a fixed list: trainers then get their batches in the run's order. "
        "Without it any worker may join (for --set deterministic=false).",
    )
    worker = roles.add_parser("worker", help="Makes batches for the trainers, as the dispatcher assigns.")
    worker.add_argument("--dispatcher", required=True, metavar="HOST:PORT", help="The dispatcher's address.")
    worker.add_argument("--port", type=port_number, default=0, help="0: a free port.")
    worker.add_argument("--host", default="localhost", help="The name the trainers reach this machine by.")
    worker.add_argument(
        "--dispatcher_timeout",
        type=cli.non_negative_int,
        default=60,
        help="Seconds to wait for the dispatcher to answer at start (default 60).",
    )
    for subparser in (dispatcher, worker):
        subparser.error = parser.error  # one-line errors from the subcommands too
    args = parser.parse_args(argv)
    if args.role == "worker":
        args.dispatcher_host, args.dispatcher_port = split_address(args.dispatcher, "--dispatcher")
    if args.role == "dispatcher":
        args.workers = worker_list(args.workers)
    return args


def worker_list(text: str | None) -> list[str] | None:
    """The HOST:PORT addresses of --workers, checked; None when not given."""
    if text is None:
        return None
    addresses = [item.strip() for item in text.split(",") if item.strip()]
    if not addresses:
        raise cli.UsageError("--workers: expected HOST:PORT,HOST:PORT,..., e.g. localhost:5051,localhost:5052")
    for address in addresses:
        host, port = split_address(address, "--workers")
        if port == 0:
            raise cli.UsageError(f"--workers {address}: a listed worker needs its own port, not 0")
    if len(set(addresses)) < len(addresses):
        raise cli.UsageError("--workers names a worker twice; list each HOST:PORT once")
    return addresses


def split_address(address: str, flag: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or grpc://HOST:PORT; a UsageError naming flag otherwise."""
    host, separator, port = address.removeprefix("grpc://").rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > MAX_PORT:
        raise cli.UsageError(f"{flag} {address}: expected HOST:PORT, e.g. localhost:5050")
    return host.strip("[]"), int(port)


def answers(host: str, port: int, timeout_seconds: float) -> str | None:
    """None when something accepts a connection at host:port, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout_seconds).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def check_dispatcher(address: str, timeout_seconds: float = 10):
    """A UsageError unless something listens at address (grpc://HOST:PORT); the service's client would wait forever."""
    if not address.startswith("grpc://"):
        raise cli.UsageError(f"--tf_data_service {address}: expected grpc://HOST:PORT, e.g. grpc://localhost:5050")
    host, port = split_address(address, "--tf_data_service")
    problem = answers(host, port, timeout_seconds)
    if problem:
        raise cli.UsageError(
            f"--tf_data_service {address}: no dispatcher answers there ({problem}); "
            f"start one with `python -m {PROG} dispatcher --port {port}`"
        )


def wait_for_dispatcher(host: str, port: int, timeout_seconds: int):
    """Returns once the dispatcher answers; a FaultError after timeout_seconds (TensorFlow waits silently)."""
    deadline = time.monotonic() + timeout_seconds
    problem = answers(host, port, 5)
    if problem:
        cli.log(PROG, f"waiting up to {timeout_seconds} s for the dispatcher at {host}:{port} ({problem})")
    while problem:
        if time.monotonic() >= deadline:
            raise cli.FaultError(
                f"no dispatcher answered at {host}:{port} in {timeout_seconds} s ({problem}); start it with "
                f"`python -m {PROG} dispatcher --port {port}` or fix --dispatcher, then run the same command again"
            )
        time.sleep(1)
        problem = answers(host, port, 5)


def check_port_free(port: int, flag: str = "--port"):
    """A UsageError when port is taken (TensorFlow's servers fail with a bare 'Could not start gRPC server')."""
    if port == 0:
        return
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: a closed port is free
            try:
                probe.bind((address, port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise cli.UsageError(
                        f"{flag} {port} is already in use on this machine; choose another (0 picks a free one)"
                    ) from None
                if error.errno == errno.EACCES:
                    raise cli.UsageError(
                        f"{flag} {port} needs more privileges than this user has; choose a port above 1023"
                    ) from None
                if error.errno != errno.EADDRNOTAVAIL:
                    raise


def start(args):
    """The started server and the line that says where it listens."""
    import tensorflow as tf

    service = tf.data.experimental.service
    try:
        if args.role == "dispatcher":
            server = service.DispatchServer(service.DispatcherConfig(port=args.port, worker_addresses=args.workers))
            port = server.target.rsplit(":", 1)[1]
            workers = (
                f"; its {len(args.workers)} workers: {', '.join(args.workers)}"
                if args.workers
                else "; any worker may join (trainers need --set deterministic=false)"
            )
            return server, (
                f"dispatcher up, listening on port {port}; trainers use --tf_data_service grpc://{args.host}:{port}, "
                f"workers --dispatcher {args.host}:{port}{workers}"
            )
        dispatcher = f"{args.dispatcher_host}:{args.dispatcher_port}"
        # %port% is filled in by the worker with the port it bound, so that port 0 works too.
        config = service.WorkerConfig(
            dispatcher_address=dispatcher,
            worker_address=f"{args.host}:%port%",
            port=args.port,
            # A worker learns of a new job's task at its heartbeat: a trainer's pieces come from every worker, so
            # one that starts late holds up the step (TensorFlow's default interval is tens of seconds).
            heartbeat_interval_ms=HEARTBEAT_MILLISECONDS,
        )
        where = f"port {args.port}" if args.port else "a free port"
        return service.WorkerServer(config), f"worker up on {where}, serving the dispatcher at {dispatcher}"
    except RuntimeError as error:
        # A dispatcher with a fixed list refuses a worker at another address.
        if "Failed to assign an index for worker" in str(error):
            raise cli.UsageError(
                f"the dispatcher at {dispatcher} has a fixed list of workers without {args.host}:{args.port}: start "
                "this worker with the --host and --port the dispatcher's --workers lists for it (a restarted worker "
                "at its own address is taken back)"
            ) from None
        # The port was taken between the check and the start.
        raise cli.UsageError(f"--port {args.port}: {error}; choose another port (0 picks a free one)") from None


def same_file(first, second) -> bool:
    """Whether two open streams write to the same file or pipe."""
    try:
        one, other = os.fstat(first.fileno()), os.fstat(second.fileno())
    except (OSError, ValueError):
        return False
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def watch_dispatcher(host: str, port: int):
    """Says when the dispatcher stops answering and when it answers again; never returns."""
    lost = None
    while True:
        time.sleep(WATCH_SECONDS)
        problem = answers(host, port, 5)
        if problem and not lost:
            cli.log(PROG, f"lost contact with the dispatcher at {host}:{port} ({problem}); waiting for it")
        elif lost and not problem:
            cli.log(PROG, f"the dispatcher at {host}:{port} answers again")
        lost = problem


def main(argv=None):
    args = parse_args(argv)
    check_port_free(args.port)
    # Ctrl-C and SIGTERM stop a server the same way whether it waits for its dispatcher or serves (cli.run_main makes
    # them raise here): the server runs on its own threads, and this one sleeps (not server.join(), which holds off
    # Python's signal handling).
    try:
        if args.role == "worker":
            wait_for_dispatcher(args.dispatcher_host, args.dispatcher_port, args.dispatcher_timeout)
        cli.quiet_tensorflow()
        server, line = start(args)
        # On stderr with every other line; on stdout too when a script reads it (for the port), but not twice where
        # both go to one place (a terminal, or `> log 2>&1`).
        cli.log(PROG, line)
        if not sys.stdout.isatty() and not same_file(sys.stdout, sys.stderr):
            print(f"[{PROG}] {line}", flush=True)
        if args.role == "worker":
            watch_dispatcher(args.dispatcher_host, args.dispatcher_port)
        while server is not None:
            time.sleep(3600)
    except KeyboardInterrupt:
        stopped_by = signal.SIGINT
    except cli.Interrupted as interrupt:
        stopped_by = interrupt.signal_number
    cli.log(PROG, f"stopped by {signal.Signals(stopped_by).name}")
    return 0


if __name__ == "__main__":
    cli.leave(cli.run_main(PROG, main))
