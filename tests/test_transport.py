"""server.transport: LitServe's ZeroMQ reply transport, fixed (addresses in the right order, close() safe)."""
from __future__ import annotations

import asyncio
import multiprocessing
import pickle

import litserve.server as ls_server
from litserve.transport.factory import TransportConfig

from vqtok.server import transport


def test_a_reply_reaches_its_consumer():
    t = transport.create_transport(TransportConfig(transport_type="zmq"))
    assert isinstance(t, transport.FixedZMQTransport)
    worker, http = pickle.loads(pickle.dumps(t)), pickle.loads(pickle.dumps(t))  # as the subprocesses get it
    assert isinstance(worker, transport.FixedZMQTransport)

    async def roundtrip():
        receiving = asyncio.create_task(http.areceive(consumer_id=0, timeout=5))
        await asyncio.sleep(0.3)  # the subscriber connects (ZeroMQ drops what is published before that)
        worker.send(("uid-1", ("reply", 200)), consumer_id=0)
        return await receiving

    assert asyncio.run(roundtrip()) == ("uid-1", ("reply", 200))
    for end in (worker, http, t):
        end.close()  # also the serving process's copy, which never sent or received (LitServe's raised)


def test_install_routes_litserve_through_the_fix():
    transport.install()
    assert ls_server.create_transport_from_config is transport.create_transport
    with multiprocessing.Manager() as manager:  # the default transport is left as LitServe builds it
        config = TransportConfig(transport_type="mp")
        config.manager = manager  # as LitServer.run sets it
        mp = transport.create_transport(config)
        assert not isinstance(mp, transport.FixedZMQTransport)
