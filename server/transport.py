"""LitServe 0.2.19's ZeroMQ reply transport, made to work (`vqtok serve --fast-queue`).

By default LitServe sends every reply from an inference worker to the HTTP processes through a multiprocessing
manager: one synchronous round trip per message, two messages per request (a py-spy profile of an encode worker put a
third of its time there). LitServe ships a ZeroMQ alternative, but in 0.2.19 `fast_queue=True` never reaches it
(`TransportConfig(transport_config=...)` where the field is `transport_type`), its factory passes the broker's two
addresses to `ZMQTransport` in swapped order (publishers then connect to the publishing side: replies vanish and
requests hang), and `close()` raises in a process that never sent or received. `install()` fixes the last two;
`VqtokServer` sets the transport type itself.
"""
from __future__ import annotations

import litserve.server as ls_server
from litserve.transport.factory import TransportConfig, create_transport_from_config
from litserve.transport.zmq_queue import Broker
from litserve.transport.zmq_transport import ZMQTransport


class FixedZMQTransport(ZMQTransport):
    def close(self, **kwargs) -> None:
        if self._zmq is not None:  # the serving process only owns the broker: nothing to close here
            self._zmq.close()

    def __reduce__(self):  # rebuilt in every worker and HTTP process: keep this class there too
        return FixedZMQTransport, (self.backend_address, self.frontend_address)


def create_transport(config: TransportConfig):
    if config.transport_type != "zmq":
        return create_transport_from_config(config)
    broker = Broker()  # XPUB (frontend, where consumers subscribe) ⇄ XSUB (backend, where producers publish)
    broker.start()
    config.frontend_address, config.backend_address = broker.frontend_address, broker.backend_address
    return FixedZMQTransport(backend_address=broker.backend_address, frontend_address=broker.frontend_address)


def install() -> None:
    """Route LitServer's transport creation through `create_transport` (idempotent)."""
    ls_server.create_transport_from_config = create_transport
