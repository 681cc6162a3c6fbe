"""trainer.data_service's checks: ports and addresses read as users write them, a taken port and a dispatcher
that does not answer said in one line. The service on localhost: test_scale_out_training.py."""

from __future__ import annotations

import argparse
import socket

import pytest
from conftest import free_port

from pipeline import cli
from trainer import data_service


def test_ports_and_addresses_are_read_or_refused_saying_the_form():
    assert data_service.port_number("0") == 0 and data_service.port_number("65535") == 65535
    with pytest.raises(argparse.ArgumentTypeError, match="expected a port from 0 to 65535, got 65536"):
        data_service.port_number("65536")
    assert data_service.split_address("grpc://localhost:5050", "--x") == ("localhost", 5050)
    assert data_service.split_address("[::1]:7", "--x") == ("::1", 7)
    for wrong in ("localhost", ":5050", "host:port", "host:70000"):
        with pytest.raises(cli.UsageError, match=f"--x {wrong}: expected HOST:PORT"):
            data_service.split_address(wrong, "--x")


def test_a_taken_port_and_a_silent_dispatcher_are_refused_in_one_line():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(cli.UsageError, match=f"--port {port} is already in use"):
            data_service.check_port_free(port)
        data_service.check_dispatcher(f"grpc://localhost:{port}")  # something answers: accepted
    data_service.check_port_free(0)  # any free port
    silent = free_port()
    with pytest.raises(cli.UsageError, match="no dispatcher answers there"):
        data_service.check_dispatcher(f"grpc://localhost:{silent}", timeout_seconds=2)
    with pytest.raises(cli.UsageError, match="expected grpc://HOST:PORT"):
        data_service.check_dispatcher(f"localhost:{silent}")
    with pytest.raises(cli.FaultError, match=f"no dispatcher answered at localhost:{silent} in 0 s"):
        data_service.wait_for_dispatcher("localhost", silent, 0)


def test_a_fixed_list_of_workers_is_read_or_refused_saying_why():
    assert data_service.worker_list(None) is None
    assert data_service.worker_list("a:1, b:2") == ["a:1", "b:2"]
    for wrong, why in ((",", "expected HOST:PORT,HOST:PORT"), ("a:1,a:1", "names a worker twice"),
                       ("a:0", "needs its own port, not 0"), ("a", "expected HOST:PORT")):  # fmt: skip
        with pytest.raises(cli.UsageError, match=why):
            data_service.worker_list(wrong)


@pytest.fixture
def service():
    """An in-process tf.data service: a dispatcher with a fixed list of 2 workers, one of them up; and one that
    takes any worker, with one up."""
    import tensorflow as tf

    service = tf.data.experimental.service
    ports = [free_port() for _ in range(3)]
    listed = [f"localhost:{port}" for port in ports[:2]]
    fixed = service.DispatchServer(service.DispatcherConfig(worker_addresses=listed))
    fixed_worker = service.WorkerServer(
        service.WorkerConfig(dispatcher_address=fixed.target.split("://")[1], worker_address=listed[0], port=ports[0])
    )
    any_worker = service.DispatchServer()
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=any_worker.target.split("://")[1]))
    yield {"fixed": fixed.target, "any": any_worker.target}
    for server in (fixed_worker, worker, fixed, any_worker):
        server.stop()


def test_the_trainer_learns_how_many_service_workers_are_listed_and_up_and_refuses_a_dispatcher_without_a_list(
    service,
):
    from trainer import input_pipeline, train

    assert input_pipeline.service_workers(service["fixed"], "probe_1") == (2, 1)
    data = train.DataService(service["any"], "job")
    refused = pytest.raises(cli.UsageError, match=r"the dispatcher has no fixed list of workers.*deterministic=false")
    with refused, train.service_errors_in_one_line(data):
        input_pipeline.service_workers(service["any"], "probe_2")
