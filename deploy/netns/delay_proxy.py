#!/usr/bin/env python3
"""A TCP proxy that adds 20 ms ± 5 ms to every answer while a flag file exists: latency on one
host where the kernel has no netem. Usage: delay_proxy.py LISTEN_HOST LISTEN_PORT UP_HOST UP_PORT FLAG"""

import asyncio
import os
import random
import sys

LISTEN_HOST, LISTEN_PORT, UP_HOST, UP_PORT, FLAG = (
    sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])


async def pipe(reader, writer, slow):
    try:
        while data := await reader.read(65536):
            if slow and os.path.exists(FLAG):
                await asyncio.sleep(random.uniform(0.015, 0.025))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def handle(client_reader, client_writer):
    try:
        up_reader, up_writer = await asyncio.open_connection(UP_HOST, UP_PORT)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, up_writer, False), pipe(up_reader, client_writer, True))


async def main():
    server = await asyncio.start_server(handle, LISTEN_HOST, LISTEN_PORT)
    async with server:
        await server.serve_forever()


asyncio.run(main())
