"""The domain core: catalog, tickets, clerks, queues, routing, the hall engine, stores, records.

No web framework imports here: everything is testable without a socket.
"""
