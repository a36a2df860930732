#!/usr/bin/env python3
"""A deliberately misbehaving TCP forwarding proxy for etcd_lock's TAP tests.

It sits between a client (a PostgreSQL instance, curl) and a real etcd and
forwards every accepted connection to the target, until the test tells it
to misbehave over a line-based control port:

  python3 t/fault_proxy.py --listen-port P --target 127.0.0.1:T \\
      --control-port C --log FILE [--parent-pid PID]

Control commands (one per line; each answered with one line "ok ..." or
"err ..."):

  pass                   forward normally; bytes buffered while holding are
                         delivered in order
  hold                   a partition with the sockets left open: forward
                         nothing in either direction, buffer the bytes;
                         new connections are accepted, the target is only
                         connected to once passing again
  cut                    close every current connection on both sides at
                         once (RST: SO_LINGER 0), dropping buffered bytes;
                         new connections get the current mode
  drop_reply RE [cut|hold|late=MS]
                         the next request matching RE is forwarded but the
                         target's reply on that connection is discarded;
                         cut (default): the client is reset when the reply
                         arrives (at most 200 ms after the request went
                         out); hold: the client is kept open and silent;
                         late=MS: as hold, and the request is forwarded MS
                         ms late (the target side stays open if the
                         client closes, so the target still applies it)
  delay MS               delay every forwarded chunk, both directions, by
                         MS ms (0 = off), order preserved
  dup RE                 the next request matching RE is forwarded, and sent
                         once more on a new connection whose reply is
                         discarded (a resend)
  status                 "ok {json}": counters and the current mode
  quit                   exit

RE is a Python regular expression (the rest of the line; DOTALL, so "." also
matches line ends) searched in the bytes of a request: its head and its
Content-Length body, or for a chunked body each received piece of it (the
head alone first). Armed drops and dups fire once each, in arming order, at
the moment the matching request is forwarded to the target.

Every command, and every drop or dup that fires (with the request line,
e.g. "POST /v3/kv/put"), is appended to the log with a timestamp: the fault
schedule of a run. With --parent-pid the proxy exits once that process is
gone, so a test that dies leaves nothing behind.
"""

import argparse
import asyncio
import collections
import json
import os
import re
import socket
import struct
import sys
import time

READ_SIZE = 65536
MAX_QUEUED = 8 << 20        # bytes queued per direction before reading pauses
MAX_HEAD = 64 << 10         # a longer request head is forwarded raw
MAX_BODY = 1 << 20          # a longer body is forwarded as it arrives
MAX_KEPT = 16 << 20         # a longer request cannot be dup'ed
DROP_CUT_AFTER = 0.2        # drop_reply cut: reset the client this soon at most
REPLY_WAIT = 10.0           # how long a discarded reply is waited for
CONNECT_TIMEOUT = 10.0
REQUEST_LINE = re.compile(rb'^([A-Z]+) (\S+) HTTP/\d\.\d$')
LINGER0 = struct.pack('ii', 1, 0)


# reset(writer): closes a stream's socket at once with an RST (SO_LINGER 0)
def reset(writer):
    if writer is None:
        return
    try:
        sock = writer.get_extra_info('socket')
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    except OSError:
        pass
    writer.transport.abort()


# close_quietly(writer): closes a stream's socket (FIN), ignoring errors
def close_quietly(writer):
    if writer is None:
        return
    try:
        writer.close()
    except Exception:
        pass


# A piece of a request as the parser cuts it: data is forwarded as one
# write; text (or None) is what RE are searched in; line is the request
# line; req is the request so far as (pieces, count), for a dup (None: too
# long to keep); ends: the request is complete with this piece.
Unit = collections.namedtuple('Unit', 'data text line req ends')


# req_bytes(unit): the bytes of unit's request so far
def req_bytes(unit):
    pieces, n = unit.req
    return b''.join(pieces[:n])


# Cuts a client's byte stream into requests (see Unit). A head and its
# Content-Length body are one unit; a chunked body (or one over MAX_BODY)
# goes out piece by piece as it arrives, the head first. Anything that does
# not look like HTTP/1.x (TLS, HTTP/2, an upgraded connection) switches the
# connection to raw: each received piece is then a unit of its own.
class RequestParser:
    def __init__(self):
        self.buf = bytearray()
        self.state = 'head'
        self.line = ''
        self.pieces = None      # this request's pieces so far (None: too long)
        self.size = 0
        self.left = 0
        self.head_sent = False
        self.after = 'head'     # state once this request is through ('raw': upgraded)
        self.cstate = 'size'    # chunked body: size, data or trailer
        self.cline = bytearray()

    # feed(data): the units that data completes, in order
    def feed(self, data):
        out = []
        if self.state == 'raw':
            return [self._unit(data, '(raw)', True, new=True)] if data else []
        self.buf += data
        while self.buf:
            if self.state == 'head':
                if not self._head(out):
                    break
            elif self.state == 'body':
                if not self._body(out):
                    break
            elif self.state == 'stream':
                self._stream(out)
            elif self.state == 'chunked':
                self._chunked(out)
            else:
                self._raw(out)
        return out

    # _unit(data, line, ends, text, new): a unit; adds data to the request
    def _unit(self, data, line, ends, text=b'', new=False):
        if new:
            self.pieces = []
            self.size = 0
        if self.pieces is not None:
            self.pieces.append(data)
            self.size += len(data)
            if self.size > MAX_KEPT:
                self.pieces = None
        req = (self.pieces, len(self.pieces)) if self.pieces is not None else None
        return Unit(data, data if text == b'' else text, line, req, ends)

    # _raw(out): gives up on HTTP: what is buffered goes out as it is
    def _raw(self, out):
        self.state = 'raw'
        rest = bytes(self.buf)
        self.buf.clear()
        if rest:
            out.append(self._unit(rest, '(raw)', True, new=True))

    # _head(out): a complete request head; False if more bytes are needed
    def _head(self, out):
        skip = 0
        while self.buf[skip:skip + 2] == b'\r\n':    # stray CRLF between requests
            skip += 2
        if skip == len(self.buf):
            return False
        if not (0x41 <= self.buf[skip] <= 0x5a):       # not a method: not HTTP/1.x
            self._raw(out)
            return True
        eol = self.buf.find(b'\r\n', skip)
        if eol >= 0 and not REQUEST_LINE.match(bytes(self.buf[skip:eol])):
            self._raw(out)
            return True
        end = self.buf.find(b'\r\n\r\n', skip)
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._raw(out)
                return True
            return False
        head = bytes(self.buf[:end + 4])
        del self.buf[:end + 4]
        first = head[skip:eol]
        method = REQUEST_LINE.match(first).group(1)
        self.line = first.decode('latin-1')
        hdr = {}
        for l in head[eol + 2:].split(b'\r\n'):
            k, sep, v = l.partition(b':')
            if sep:
                hdr[k.strip().lower()] = v.strip().lower()
        upgrade = b'upgrade' in hdr.get(b'connection', b'') or method in (b'CONNECT', b'PRI')
        self.after = 'raw' if upgrade else 'head'
        if b'chunked' in hdr.get(b'transfer-encoding', b''):
            self.state = 'chunked'
            self.cstate = 'size'
            self.cline.clear()
            out.append(self._unit(head, self.line, False, new=True))
            return True
        try:
            self.left = int(hdr.get(b'content-length', b'0'))
        except ValueError:
            self.left = 0
        if self.left <= 0:
            out.append(self._unit(head, self.line, True, new=True))
            self._next(out)
            return True
        if self.left > MAX_BODY:
            self.state = 'stream'
            out.append(self._unit(head, self.line, False, new=True))
            return True
        self.state = 'body'
        self.head_sent = b'100-continue' in hdr.get(b'expect', b'')
        if self.head_sent:
            # the client waits for "100 Continue" before it sends the body:
            # the head goes now, the body is matched with it when complete
            out.append(self._unit(head, self.line, False, text=None, new=True))
        else:
            self.pieces = [head]
            self.size = len(head)
        return True

    # _body(out): a complete Content-Length body; False if more is needed
    def _body(self, out):
        if len(self.buf) < self.left:
            return False
        body = bytes(self.buf[:self.left])
        del self.buf[:self.left]
        whole = self.pieces[0] + body
        if self.head_sent:
            out.append(self._unit(body, self.line, True, text=whole))
        else:
            out.append(self._unit(whole, self.line, True, new=True))
        self._next(out)
        return True

    # _stream(out): a long Content-Length body, forwarded as it comes
    def _stream(self, out):
        take = min(self.left, len(self.buf))
        piece = bytes(self.buf[:take])
        del self.buf[:take]
        self.left -= take
        out.append(self._unit(piece, self.line, self.left == 0))
        if self.left == 0:
            self._next(out)

    # _chunked(out): forwards what is buffered of a chunked body at once
    def _chunked(self, out):
        data = bytes(self.buf)
        self.buf.clear()
        try:
            end = self._scan(data)
        except ValueError:
            out.append(self._unit(data, self.line, True))
            self.state = 'raw'
            return
        piece = data if end < 0 else data[:end]
        out.append(self._unit(piece, self.line, end >= 0))
        if end >= 0:
            self.buf += data[end:]
            self._next(out)

    # _scan(data): where in data the chunked body ends, or -1
    def _scan(self, data):
        i = 0
        n = len(data)
        while i < n:
            if self.cstate == 'data':
                take = min(self.left, n - i)
                i += take
                self.left -= take
                if self.left == 0:
                    self.cstate = 'size'
                continue
            j = data.find(b'\n', i)
            if j < 0:
                self.cline += data[i:]
                return -1
            self.cline += data[i:j + 1]
            i = j + 1
            line = bytes(self.cline).strip()
            self.cline.clear()
            if self.cstate == 'size':
                size = int(line.split(b';')[0], 16)
                if size == 0:
                    self.cstate = 'trailer'
                else:
                    self.cstate = 'data'
                    self.left = size + 2    # the data and its CRLF
            elif line == b'':
                return i
        return -1

    # _next(out): a request is complete: the next one, or raw after an upgrade
    def _next(self, out):
        self.state = self.after
        if self.state == 'raw':
            self._raw(out)


# A byte queue of one direction of one connection: items of (time due,
# bytes) or (time due, None) for the end of the stream.
class Pipe:
    def __init__(self):
        self.items = collections.deque()
        self.bytes = 0
        self.nonempty = asyncio.Event()
        self.drained = asyncio.Event()

    # put(due, data): queues data (None: end of stream)
    def put(self, due, data, unit=None):
        self.items.append((due, data, unit))
        self.bytes += len(data) if data else 0
        self.nonempty.set()

    # get(): the oldest item, waiting for one
    async def get(self):
        while not self.items:
            self.nonempty.clear()
            await self.nonempty.wait()
        item = self.items.popleft()
        self.bytes -= len(item[1]) if item[1] else 0
        if self.bytes <= MAX_QUEUED:
            self.drained.set()
        return item

    # room(): waits while too much is queued
    async def room(self):
        while self.bytes > MAX_QUEUED:
            self.drained.clear()
            await self.drained.wait()


# A duplicate delivery: a new connection to the target that gets the bytes
# of one request and whose reply is read and thrown away.
class Dup:
    def __init__(self, proxy, first):
        self.proxy = proxy
        self.queue = asyncio.Queue()
        self.queue.put_nowait(first)
        self.writer = None
        self.reply = None
        proxy.dups.add(self)
        self.task = asyncio.get_running_loop().create_task(self.run())

    # send(data): more bytes of the same request (a chunked body)
    def send(self, data):
        self.queue.put_nowait(data)

    # end(): the request is complete
    def end(self):
        self.queue.put_nowait(None)

    # run(): connect, send, wait for the reply (bounded), close
    async def run(self):
        try:
            r, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.proxy.thost, self.proxy.tport), CONNECT_TIMEOUT)
            self.reply = asyncio.get_running_loop().create_task(r.read(READ_SIZE))
            self.reply.add_done_callback(lambda t: t.cancelled() or t.exception())
            while True:
                data = await self.queue.get()
                if data is None:
                    break
                self.writer.write(data)
                await self.writer.drain()
            # the reply (its first bytes) says the target took the request
            await asyncio.wait_for(self.reply, REPLY_WAIT)
        except (OSError, asyncio.TimeoutError, EOFError):
            pass
        finally:
            self.abort()

    # abort(): ends the duplicate at once
    def abort(self):
        self.proxy.dups.discard(self)
        reset(self.writer)
        if self.reply is not None:
            self.reply.cancel()
        if self.task is not asyncio.current_task():
            self.task.cancel()


# One accepted client connection and its connection to the target.
class Conn:
    def __init__(self, proxy, creader, cwriter):
        proxy.next_id += 1
        self.id = proxy.next_id
        self.proxy = proxy
        self.cr, self.cw = creader, cwriter
        self.sr = self.sw = None
        self.up = Pipe()
        self.down = Pipe()
        self.parser = RequestParser()
        self.client_open = True
        self.server_open = True
        self.up_done = False
        self.down_done = False
        self.dropped = None         # 'cut' or 'hold' once a drop_reply fired
        self.late = 0.0             # seconds the dropped request waits (late=MS)
        self.drop_pending = False   # the dropped request is not complete yet
        self.swallow = False        # client bytes after the dropped request
        self.mirror = None          # the Dup of a chunked request in progress
        self.tasks = set()
        self.timers = []
        proxy.conns.add(self)
        proxy.stats['accepted'] += 1
        self.spawn(self.read_client(), 'client')
        self.spawn(self.write_server(), 'server')
        self.spawn(self.write_client(), 'client')

    # spawn(coro, side): runs coro, a task of this connection on side
    def spawn(self, coro, side):
        t = asyncio.get_running_loop().create_task(self.guard(coro, side))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # guard(coro, side): an error on this connection closes this connection
    # only; once a reply is being dropped, only the side that failed
    async def guard(self, coro, side):
        try:
            await coro
        except asyncio.CancelledError:
            pass
        except Exception:
            if not self.dropped:
                self.abort()
            elif side == 'client':
                self.close_client(True)
            else:
                self.close_server()

    # due(): when a chunk read now may be forwarded (delay)
    def due(self):
        return time.monotonic() + self.proxy.delay

    # wait_due(due): sleeps until due, then while the proxy holds
    async def wait_due(self, due):
        d = due - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        await self.proxy.passing.wait()

    # read_client(): client bytes, cut into requests, into the up pipe
    async def read_client(self):
        while True:
            await self.up.room()
            data = await self.cr.read(READ_SIZE)
            if not self.client_open:
                return
            if not data and self.dropped:
                self.close_client(False)    # gone while its reply is dropped
                return
            if not data:
                self.up.put(self.due(), None)
                return
            due = self.due()
            for u in self.parser.feed(data):
                self.up.put(due, u.data, u)

    # write_server(): connects to the target (once passing) and forwards
    async def write_server(self):
        await self.proxy.passing.wait()
        self.sr, self.sw = await asyncio.wait_for(
            asyncio.open_connection(self.proxy.thost, self.proxy.tport), CONNECT_TIMEOUT)
        if not self.server_open:
            reset(self.sw)
            return
        self.spawn(self.read_server(), 'server')
        while True:
            due, data, unit = await self.up.get()
            await self.wait_due(due)
            if data is None:
                self.up_done = True
                if not self.dropped:
                    if self.sw.can_write_eof():
                        self.sw.write_eof()
                    self.check_done()
                return
            if self.swallow:
                continue
            self.before_forward(unit)
            if self.late > 0:
                # a request that reaches etcd late, after its client gave up
                late, self.late = self.late, 0.0
                await asyncio.sleep(late)
                self.proxy.logline('late request forwarded conn=%d' % self.id)
            self.sw.write(data)
            await self.sw.drain()
            self.after_forward(unit)

    # before_forward(unit): fires armed drops and dups that match unit
    def before_forward(self, unit):
        p = self.proxy
        if unit.text is None:
            return
        rule = p.take_rule(p.drops, unit.text)
        if rule is not None:
            p.stats['drops_fired'] += 1
            p.logline('fired drop_reply %s conn=%d %s' % (rule[1], self.id, unit.line))
            self.dropped = rule[1]
            if self.dropped.startswith('late='):
                self.late = int(self.dropped[5:]) / 1000.0
                self.dropped = 'hold'
            self.drop_pending = True
        rule = p.take_rule(p.dup_rules, unit.text) if unit.req is not None else None
        if rule is not None:
            p.stats['dups_fired'] += 1
            p.logline('fired dup conn=%d %s' % (self.id, unit.line))
            if self.mirror is not None:
                self.mirror.end()
            self.mirror = ('new', req_bytes(unit))

    # after_forward(unit): starts a dup, ends a dropped request's exchange
    def after_forward(self, unit):
        if isinstance(self.mirror, tuple):
            self.mirror = Dup(self.proxy, self.mirror[1])
        elif self.mirror is not None:
            self.mirror.send(unit.data)
        if unit.ends:
            if self.mirror is not None:
                self.mirror.end()
                self.mirror = None
            if self.drop_pending:
                self.drop_pending = False
                self.swallow = True
                loop = asyncio.get_running_loop()
                if self.dropped == 'cut':
                    self.timers.append(loop.call_later(DROP_CUT_AFTER, self.close_client, True))
                self.timers.append(loop.call_later(REPLY_WAIT, self.close_server))

    # read_server(): target bytes into the down pipe (discarded once dropped)
    async def read_server(self):
        while True:
            await self.down.room()
            data = await self.sr.read(READ_SIZE)
            if self.dropped:
                # the reply of the dropped request has arrived: lose it
                if self.dropped == 'cut':
                    self.close_client(True)
                self.close_server()
                return
            if not data:
                self.down.put(self.due(), None)
                return
            self.down.put(self.due(), data)

    # write_client(): the down pipe to the client
    async def write_client(self):
        while True:
            due, data, _ = await self.down.get()
            await self.wait_due(due)
            if data is None:
                self.down_done = True
                if self.cw.can_write_eof():
                    self.cw.write_eof()
                self.check_done()
                return
            self.cw.write(data)
            await self.cw.drain()

    # check_done(): both directions ended cleanly: close both sides
    def check_done(self):
        if self.up_done and self.down_done:
            self.close_client(False)
            self.close_server()

    # close_client(rst): closes the client side (rst: with an RST)
    def close_client(self, rst):
        if self.client_open:
            self.client_open = False
            if rst:
                reset(self.cw)
            else:
                close_quietly(self.cw)
        self.finish()

    # close_server(): closes the target side
    def close_server(self):
        if self.server_open:
            self.server_open = False
            reset(self.sw)
        self.finish()

    # abort(): closes both sides at once with RSTs (cut, errors)
    def abort(self):
        self.close_client(True)
        self.close_server()

    # finish(): once both sides are closed, forget the connection
    def finish(self):
        if self.client_open or self.server_open or self not in self.proxy.conns:
            return
        self.proxy.conns.discard(self)
        for t in self.timers:
            t.cancel()
        if isinstance(self.mirror, Dup):
            self.mirror.end()
        me = asyncio.current_task()
        for t in list(self.tasks):
            if t is not me:
                t.cancel()


# The proxy: its mode, rules, counters, connections and control server.
class Proxy:
    def __init__(self, args):
        host, _, port = args.target.rpartition(':')
        self.thost, self.tport = host or '127.0.0.1', int(port)
        self.args = args
        self.mode = 'pass'
        self.passing = asyncio.Event()
        self.passing.set()
        self.delay = 0.0
        self.conns = set()
        self.dups = set()
        self.drops = []         # [(compiled RE, how, source)]
        self.dup_rules = []     # [(compiled RE, None, source)]
        self.next_id = 0
        self.stats = dict(accepted=0, cut=0, drops_armed=0, drops_fired=0, dups_armed=0, dups_fired=0)
        self.log = open(args.log, 'a', buffering=1)
        self.done = asyncio.Event()

    # logline(text): one timestamped line of the fault schedule
    def logline(self, text):
        self.log.write('%.3f %s\n' % (time.time(), text))

    # take_rule(rules, text): removes and returns the first rule matching text
    def take_rule(self, rules, text):
        for i, rule in enumerate(rules):
            if rule[0].search(text):
                del rules[i]
                return rule
        return None

    # status(): the counters and mode
    def status(self):
        s = dict(self.stats)
        s.update(open=len(self.conns), mode=self.mode, delay_ms=int(round(self.delay * 1000)),
            drops_pending=len(self.drops), dups_pending=len(self.dup_rules),
            dup_conns=len(self.dups),
            queued_bytes=sum(c.up.bytes + c.down.bytes for c in self.conns))
        return s

    # command(line): runs one control command; returns the answer line
    def command(self, line):
        cmd, _, rest = line.strip().partition(' ')
        rest = rest.strip()
        if cmd == 'pass':
            self.mode = 'pass'
            self.passing.set()
            return 'ok pass'
        if cmd == 'hold':
            self.mode = 'hold'
            self.passing.clear()
            return 'ok hold'
        if cmd == 'cut':
            n = 0
            for c in list(self.conns):
                c.abort()
                n += 1
            for d in list(self.dups):
                d.abort()
            self.stats['cut'] += n
            return 'ok cut %d' % n
        if cmd == 'drop_reply':
            how = 'cut'
            m = re.match(r'^(.*?)\s+(cut|hold|late=\d+)$', rest, re.S)
            if m:
                rest, how = m.group(1), m.group(2)
            rx = self.compile(rest)
            self.drops.append((rx, how, rest))
            self.stats['drops_armed'] += 1
            return 'ok armed'
        if cmd == 'dup':
            self.dup_rules.append((self.compile(rest), None, rest))
            self.stats['dups_armed'] += 1
            return 'ok armed'
        if cmd == 'delay':
            if not re.fullmatch(r'\d+', rest):
                raise ValueError('delay wants milliseconds')
            self.delay = int(rest) / 1000.0
            return 'ok delay %s' % rest
        if cmd == 'status':
            return 'ok ' + json.dumps(self.status(), sort_keys=True)
        if cmd == 'quit':
            self.done.set()
            return 'ok bye'
        raise ValueError('unknown command %r' % cmd)

    # compile(source): a request RE (bytes, DOTALL)
    def compile(self, source):
        if source == '':
            raise ValueError('a regular expression is needed')
        try:
            return re.compile(source.encode('utf-8'), re.S)
        except re.error as e:
            raise ValueError('bad regular expression: %s' % e)

    # control(reader, writer): one control connection, a line per command
    async def control(self, reader, writer):
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode('utf-8', 'replace').strip()
                if not line:
                    continue
                self.logline('cmd ' + line)
                try:
                    answer = self.command(line)
                except ValueError as e:
                    answer = 'err %s' % e
                    self.logline('-> ' + answer)
                writer.write((answer + '\n').encode())
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            close_quietly(writer)

    # accept(reader, writer): a client connection to forward
    async def accept(self, reader, writer):
        try:
            writer.get_extra_info('socket').setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        Conn(self, reader, writer)

    # watch_parent(pid): ends the proxy once pid is gone
    async def watch_parent(self, pid):
        while True:
            await asyncio.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self.logline('parent %d gone' % pid)
                self.done.set()
                return
            except PermissionError:
                pass

    # run(): serves until quit (or the parent is gone)
    async def run(self):
        a = self.args
        srv = await asyncio.start_server(self.accept, '127.0.0.1', a.listen_port, backlog=256)
        ctl = await asyncio.start_server(self.control, '127.0.0.1', a.control_port)
        self.logline('start listen=127.0.0.1:%d target=%s:%d control=127.0.0.1:%d pid=%d'
            % (a.listen_port, self.thost, self.tport, a.control_port, os.getpid()))
        if a.parent_pid:
            asyncio.get_running_loop().create_task(self.watch_parent(a.parent_pid))
        await self.done.wait()
        srv.close()
        ctl.close()
        for c in list(self.conns):
            c.abort()
        for d in list(self.dups):
            d.abort()
        self.logline('exit')
        await asyncio.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description='a misbehaving TCP proxy for TAP tests')
    ap.add_argument('--listen-port', type=int, required=True)
    ap.add_argument('--target', required=True, help='host:port of the real server')
    ap.add_argument('--control-port', type=int, required=True)
    ap.add_argument('--log', required=True, help='the fault schedule is appended here')
    ap.add_argument('--parent-pid', type=int, default=0, help='exit when this process is gone')
    args = ap.parse_args()

    async def go():
        await Proxy(args).run()

    try:
        asyncio.run(go())
    except OSError as e:
        print('fault_proxy: %s' % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
