#!/usr/bin/env python3
"""What a watch per wait costs etcd, against one watch stream kept open.

Usage: python3 bench/watch_cost.py HOST:PORT ETCD_PID [N]

Opens N watches on one key through etcd's JSON gateway, each the way a
waiter does it today (a POST to /v3/watch on a new connection, until
"created"), then N create/cancel pairs on one chunked stream (Expect:
100-continue, own watch IDs). Prints etcd's CPU time (from /proc) and the
wall time per watch for both. The measurement behind the decision not to
keep a watch stream per backend (see README, Performance).
"""
import socket, time, base64, json, sys, os
host, port = sys.argv[1].split(":")
EP = (host, int(port))
PID = int(sys.argv[2])
def cpu():
    f=open('/proc/%d/stat'%PID).read().split(')')[1].split(); return (int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK')
key=base64.b64encode(b'/wc/k').decode()
N=int(sys.argv[3]) if len(sys.argv)>3 else 500
# A: new connection per watch (what each wait does today)
c0=cpu(); t0=time.time()
for i in range(N):
    s=socket.create_connection(EP); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
    body=json.dumps({"create_request":{"key":key}}).encode()
    s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"%len(body)+body)
    buf=b""
    while b'"created":true' not in buf: buf+=s.recv(65536)
    s.close()
a_cpu=cpu()-c0; a_t=time.time()-t0
# B: one chunked stream, create + cancel per wait
s=socket.create_connection(EP); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY,1)
s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
buf=b""
while b"100 Continue" not in buf: buf+=s.recv(65536)
def chunk(d): s.sendall(b"%x\r\n"%len(d)+d+b"\r\n")
c0=cpu(); t0=time.time(); buf=b""
for i in range(1,N+1):
    chunk(json.dumps({"create_request":{"key":key,"watch_id":str(i)}}).encode())
    while ('"watch_id":"%d","created":true'%i).encode() not in buf: buf+=s.recv(65536)
    chunk(json.dumps({"cancel_request":{"watch_id":str(i)}}).encode())
    buf=buf[-200:]
b_cpu=cpu()-c0; b_t=time.time()-t0
print("per watch: new connection: etcd cpu %.0f us, wall %.0f us; one stream: etcd cpu %.0f us, wall %.0f us" % (a_cpu/N*1e6, a_t/N*1e6, b_cpu/N*1e6, b_t/N*1e6))
