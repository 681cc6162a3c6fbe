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
