#!/usr/bin/env python3
"""A second, independent HTTP/1.1 parser for the differential test (tests/differential_h1.rs).

h11 (https://github.com/python-hyper/h11) shares no code with Weft's parsers or with httparse.

  h11_peer.py serve   listens on 127.0.0.1, prints its port on the first line, then one JSON
                      line per request the proxy forwards, as h11 reads it, and answers each with
                      200 with `<case>-<n>` (its n-th request of that case) in the
                      body and in `x-answer`; bytes h11 refuses print {"refused": why,
                      "case": the X-Case of a request cut short} and close the connection.
  h11_peer.py parse   reads one JSON line per case on stdin ({"case": n, "bytes": base64}) and
                      prints, per case, the requests h11 reads from those bytes as a server
                      would, and why it stopped ("refused: ...", "incomplete", "closed").
"""
import asyncio
import base64
import json
import sys

import h11


def request_json(req, body, trailers):
    return {
        "method": req.method.decode("latin-1"),
        "target": req.target.decode("latin-1"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
        "body": base64.b64encode(bytes(body)).decode(),
        "trailers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in trailers],
    }


def answer(conn, req, body):
    headers = [("content-length", str(len(body))), ("x-answer", body)]
    out = conn.send(h11.Response(status_code=200, headers=headers))
    if req.method != b"HEAD":
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    return out


def read_all(data):
    """The requests h11 reads from one client's bytes, and why it stopped."""
    conn = h11.Connection(h11.SERVER)
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request-line,
    # as the proxy does; h11 refuses it.
    while data.startswith(b"\r\n"):
        data = data[2:]
    conn.receive_data(data)
    conn.receive_data(b"")
    requests, req, body = [], None, bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return requests, "incomplete"
            if isinstance(event, h11.ConnectionClosed):
                return requests, "incomplete" if req is not None else "closed"
            if isinstance(event, h11.Request):
                req, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                requests.append(request_json(req, body, event.headers))
                answer(conn, req, b"")
                req = None
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return requests, "closed"
                conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        return requests, "refused: %s" % e


def parse():
    for line in sys.stdin:
        case = json.loads(line)
        requests, end = read_all(base64.b64decode(case["bytes"]))
        print(json.dumps({"case": case["case"], "requests": requests, "end": end}), flush=True)


SERVED = {}


async def serve_connection(reader, writer):
    conn = h11.Connection(h11.SERVER)
    req, body = None, bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                break
            if isinstance(event, h11.Request):
                req, body = event, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                seen = request_json(req, body, event.headers)
                case = dict((n.lower(), v) for n, v in seen["headers"]).get("x-case", "none")
                print(json.dumps(seen), flush=True)
                served = SERVED.get(case, 0)
                SERVED[case] = served + 1
                writer.write(answer(conn, req, ("%s-%d" % (case, served)).encode()))
                req = None
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        # Which case's request was cut, if its head had arrived.
        case = None
        if req is not None:
            case = dict((n.lower(), v) for n, v in req.headers).get(b"x-case", b"").decode("latin-1")
        print(json.dumps({"refused": str(e), "case": case}), flush=True)
    except ConnectionError:
        pass
    writer.close()


async def serve():
    server = await asyncio.start_server(serve_connection, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        asyncio.run(serve())
    elif sys.argv[1:] == ["parse"]:
        parse()
    else:
        sys.exit("usage: h11_peer.py serve|parse")
